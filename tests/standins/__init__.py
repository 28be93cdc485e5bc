"""Local stand-ins of the providers' REST APIs, faithful to their public docs.

Each module holds one provider's stand-in: its objects, seeded by tests, served over a
real socket by :class:`StandInServer`, with the docs' list shapes, pagination, auth,
rate limits and errors, and a log of the calls made to it.
"""
