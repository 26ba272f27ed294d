"""
Cross-process server sockets: the parent process owns the listening
sockets and hands each accepted connection to a child process as a file
descriptor (C{SCM_RIGHTS}); no byte of a connection passes through the
parent.  C{docs/architecture.md} maps the modules; C{docs/workers.md}
describes the process model.
"""
