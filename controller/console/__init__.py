"""`edgefleetctl console`: the fleet in a browser, served on the operator's own machine.

It talks to the controller over gRPC with the operator's credential, like every other
`edgefleetctl` command, so it adds no way into the controller: each view and action is
limited by that operator's role (the controller refuses what the role lacks; the console
only hides what it would refuse). `app.py` is the HTTP side (session, CSRF, headers),
`pages.py` the views, `charts.py` the SVG drawings, `templates/` and `static/` the HTML,
CSS and the small script that refreshes a page's live part.
"""
