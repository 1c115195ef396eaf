"""The browser console's files (SPEC 5): `templates/index.html`, the app shell,
and `static/`, its ES modules and style sheet. `entrypoints.http.console`
serves them; no build step makes them."""
