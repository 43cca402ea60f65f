"""The course kit's commands (run from the repository root).

    python -m grading student [--out student]       student copies of every chapter
    python -m grading grade DIR [--out D] [--salt S] autograde submissions
    python -m grading timings                        compute time of each exercise
    python -m grading table                          the instructor guide's table
    python -m grading book [--chapters '01 02']      the book without solutions
"""
import argparse
import sys
from pathlib import Path

from . import course

BUILD = course.ROOT / "_build"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("student", help="write student copies")
    p.add_argument("--out", type=Path, default=course.ROOT / "student")
    p.add_argument("--course", type=Path, default=BUILD / "course")
    p = sub.add_parser("grade", help="autograde a folder of submissions")
    p.add_argument("submissions", type=Path)
    p.add_argument("--out", type=Path, default=BUILD / "grading")
    p.add_argument("--salt", default=None,
                   help=f"secret for the hidden cases (else ${course.SALT_VARIABLE} "
                        "or the public default)")
    p.add_argument("--no-html", action="store_true", help="skip nbgrader's HTML")
    sub.add_parser("timings", help="CPU time of each exercise's hidden tests")
    sub.add_parser("table", help="print the exercise table of instructor.md")
    p = sub.add_parser("book", help="build the book without solutions")
    p.add_argument("--out", type=Path, default=BUILD / "student")
    p.add_argument("--chapters", default="",
                   help="only these chapters, e.g. '01 02 03' (default: all)")
    args = parser.parse_args(argv)

    if args.command == "student":
        for path in course.write_student(args.out, args.course):
            print(f"wrote {path}")
        print(f"and {args.out / 'data'}: run the notebooks from {args.out}")
    elif args.command == "grade":
        from . import grade
        res = grade.grade(args.submissions, args.out, args.salt, html=not args.no_html)
        for aid, rows in res.items():
            if aid != "seconds":
                csv_path = args.out / f"grades_{aid}.csv"
                print(f"{aid}: {len(rows)} submissions -> {csv_path}")
        print(f"feedback in {args.out / 'feedback'}; took {res['seconds']:.0f} s")
    elif args.command == "timings":
        from . import guide
        guide.print_timings()
    elif args.command == "table":
        from . import guide
        print(guide.table())
    elif args.command == "book":
        from . import site
        keep = {c.zfill(2) for c in args.chapters.replace(",", " ").split()} or None
        return site.build(args.out, keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
