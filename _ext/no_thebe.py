"""Drop Thebe's scripts from every page.

Jupyter Book always loads sphinx-thebe, which points at a CDN and declares its
configuration twice on each page (a console error). The book has no live-code
buttons, so its pages do without Thebe entirely.
"""


def _drop_thebe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files", [])
    context["script_files"] = [
        s for s in scripts
        if "thebe" not in str(s).lower()
        and "thebe" not in str(getattr(s, "attributes", {}).get("body", "")).lower()]


def setup(app):
    app.connect("html-page-context", _drop_thebe, priority=900)
    return {"parallel_read_safe": True}
