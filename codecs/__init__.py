"""legato.codecs: neural codecs and vocoders (later issues).

Imported as ``legato.codecs``; never put this folder on sys.path directly, it
would shadow the standard library ``codecs`` module."""
