"""``legato serve --bulk --frontends N``: the WebSocket side in N processes over one engine process.

``process.py`` is a front end (its ``RemoteEngine`` is a ``StreamService`` over the pipe), ``links.py`` the engine
process's end of every pipe, ``messages.py`` what crosses a pipe (typed), ``pipe.py`` how (framing, raw audio)."""
