"""Every engine a server runs on keeps the one contract (stream/service.py): the servers use nothing else."""

from legato.stream.service import StreamService


def test_engines_are_stream_services(recognizer):
    from legato.server.bulk_engine import BulkEngine
    from legato.server.frontends.process import RemoteEngine
    from legato.server.models import engine_for

    assert isinstance(engine_for(recognizer, max_streams=2), StreamService)
    for cls in (BulkEngine, RemoteEngine):  # their constructors need a FastConformer model or a pipe: the class suffices
        assert all(callable(getattr(cls, m, None)) for m in ("start", "stop", "aopen_stream")), cls
