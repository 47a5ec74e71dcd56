"""The operator dashboard under ``/dashboard``: routes and login (routes.py), cookie
sessions (session.py), page data (views.py), Jinja2 templates and static files."""
