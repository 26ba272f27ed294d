"""
Cross-process server sockets: the parent process owns the listening
sockets and hands each accepted connection to a child process as a file
descriptor (C{SCM_RIGHTS}); no byte of a connection passes through the
parent.

 - L{wire}: the messages between parent and child, encoded and decoded;
   L{channel}: the C{SOCK_SEQPACKET} channel that carries them;
   L{control}: the table that checks each control message's fields and
   calls its handler.
 - L{dispatch}: the dispatcher that holds each connection until a child
   acknowledges it, picks the least-loaded child and pauses accepting
   when none can take more.
 - L{links}: what the dispatcher needs of a child's link.
 - L{parent}: the parent's end of a child's channel, and the factory the
   parent listens with; L{childlisten}: the listeners a child asks its
   parent for (Gecko's C{TCPServerSocketChild}), only on allowed ports.
 - L{child}: the child's end, and L{TCPServerSocketChild} (Gecko's
   C{nsITCPServerSocketInternal}).
 - L{pool}: the worker processes of C{twistd serversock} and cluster mode:
   restarts, C{--timeout}, reload, C{--max-requests}, one worker more or
   fewer; L{slots}: one worker process, its number and its states;
   L{spawn}: how one is started; L{defaults}: the grace period, timeout and
   heartbeat.
 - L{signals}: the parent's signals; L{sdnotify}: systemd notification.
 - L{worker}: the worker process's main program.

The process model is described in C{docs/workers.md}.
"""
