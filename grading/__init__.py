"""The course kit: student copies, grading with nbgrader, the student site.

Run from the repository root: ``python -m grading --help`` (``make student``,
``make grade``, ``make book STUDENT=1``). ``notebook.py`` holds the one rule
that classifies the cells of a chapter's exercise section; ``PLAN.md`` the
recipe for converting a chapter.
"""
