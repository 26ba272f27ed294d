# Twisted's ReactorBuilder tests swap the global reactor for each test; under
# pytest-twisted's running reactor that would break the session.  They run
# with trial instead: python3 -m tests.conformance (see docs/conformance.md).
collect_ignore = ["twistedsuite.py", "__main__.py"]
