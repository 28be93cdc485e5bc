"""One module per payment provider: ``verify`` the raw request, ``parse`` it into events.

Provider modules are pure: no Flask, no Redis, and the clock is an argument.
"""
