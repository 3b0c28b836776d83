"""legato.clients: the ``legato`` command line and client libraries."""
