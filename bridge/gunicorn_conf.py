"""gunicorn settings the command lines do not carry (``-c python:bridge.gunicorn_conf``).

The Procfile's web process, the Dockerfile and ``bridge run`` all load this module.
"""

# On SIGTERM gunicorn stops accepting connections and lets in-flight requests finish for
# this long: webhooks take milliseconds, and Heroku sends SIGKILL 30 s after SIGTERM.
graceful_timeout = 20
