"""
Hardening helpers that run as their own processes.

  - L{echoserver<tests.soak.echoserver>}: an echo server (a C{gecko:}
    endpoint with a Twisted protocol, or a C{ServerSocket} with Gecko
    streams) that reports its log as JSON lines; the fd-exhaustion and
    concurrency tests run it in a subprocess with its own descriptor limit.
  - L{soak<tests.soak.soak>}: the soak run (connect/echo/close cycles and
    init/close cycles), short by default, long with C{--long} or
    C{SERVERSOCK_SOAK=long}.  See C{docs/reliability.md}.

Run them from the repository root: C{python -m tests.soak.soak --long}.
"""
