"""Tests of the provider sources against their stand-ins."""
