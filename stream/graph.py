"""Stages and pipelines: how processing steps compose.

A :class:`Stage` turns input frames of many streams into output frames. The
engine calls it with a *batch*: at most one pending frame from each of up to
``max_batch`` streams. Per-stream context (a state-pool slot, a resampler
stream) is created by ``open`` and dropped by ``close``.

Contract for ``process``:

* it returns, per input item, the list of frames that item produced (possibly
  empty, possibly several);
* an :class:`EndOfStream` input means: flush, then emit ``EndOfStream`` last;
* frames a stage does not handle are passed through unchanged, in order;
* a stage that handles streams one by one reports a stream's failure by
  putting the exception in that item's place in the result list; the other
  items' outputs stand, and only that stream ends;
* a stage that raises must leave every stream's saved state unchanged (pool
  stages commit state only after a successful step), so the engine can retry
  the streams one by one and end only the stream that fails.

A *generating* stage (text-to-speech, any model that takes many steps per
input) keeps work between inputs: while ``pending(context)`` is true for a
stream, the engine schedules that stream on the stage even with no input
queued, handing it a :class:`Tick` frame. Such a stage emits ``EndOfStream``
only once the work for the stream is done, however early the input's end came.

A :class:`Pipeline` is a list of stages and is itself a stage: run directly it
pushes each item through its stages in turn; given to the engine, it is
flattened so each stage is scheduled and batched on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from legato.stream.frames import EndOfStream, Frame


@dataclass(frozen=True)
class StreamInfo:
    """What a stage knows about a stream when it opens: id, budget, client options."""

    stream_id: str
    budget_s: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


BatchItem = tuple[Any, Frame]  # (the stage's per-stream context, the input frame)


class Stage:
    """Base of every stage. ``device`` picks the engine worker that runs it."""

    name: str = "stage"
    device: str = "cpu"
    max_batch: int = 1

    def open(self, stream: StreamInfo) -> Any:
        return None

    def close(self, context: Any) -> None:
        pass

    def pending(self, context: Any) -> bool:
        """Whether the stage has work of its own for this stream without new input (a generation in progress)."""
        return False

    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame]]:
        raise NotImplementedError

    def flatten(self) -> list["Stage"]:
        return [self]

    def __or__(self, other: "Stage") -> "Pipeline":
        return Pipeline([self, other])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


PER_STREAM_MAX_BATCH = 4096


class PerStreamStage(Stage):
    """A stage that handles each stream on its own (cheap per-stream work: DSP, rechunking).

    Subclasses implement ``handle(context, frame)`` for the frame types they
    accept (``accepts``) and ``finish(context)`` for end of stream.
    """

    accepts: tuple[type, ...] = ()
    # Every ready stream in one call: taken one stream per step, per-stream stages fed later stages one stream at a
    # time, and under load those stages, always late, stepped batches of one (mean 1.1 streams at 64 live streams).
    max_batch = PER_STREAM_MAX_BATCH

    def handle(self, context: Any, frame: Frame) -> list[Frame]:
        raise NotImplementedError

    def finish(self, context: Any) -> list[Frame]:
        return []

    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame] | Exception]:
        out: list[list[Frame] | Exception] = []
        for context, frame in batch:
            try:
                if isinstance(frame, EndOfStream):
                    out.append(self.finish(context) + [frame])
                elif isinstance(frame, self.accepts):
                    out.append(self.handle(context, frame))
                else:
                    out.append([frame])
            except Exception as exc:  # this stream alone fails; the others' work stands
                out.append(exc)
        return out


class Pipeline(Stage):
    """Stages in series; itself a stage. ``a | b | c`` builds one too."""

    def __init__(self, stages: Sequence[Stage], name: str = "pipeline"):
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = list(stages)
        self.name = name
        self.max_batch = min(s.max_batch for s in self.stages)

    def __or__(self, other: Stage) -> "Pipeline":
        return Pipeline(self.stages + [other], self.name)

    def flatten(self) -> list[Stage]:
        return [leaf for s in self.stages for leaf in s.flatten()]

    def open(self, stream: StreamInfo) -> list[Any]:
        contexts: list[Any] = []
        try:
            for s in self.stages:
                contexts.append(s.open(stream))
        except BaseException:
            for s, c in zip(self.stages, contexts):
                s.close(c)
            raise
        return contexts

    def close(self, context: list[Any]) -> None:
        for s, c in zip(self.stages, context):
            s.close(c)

    def process(self, batch: Sequence[BatchItem]) -> list[list[Frame]]:
        # Each item's frames flow through the stages in order; a stage sees at
        # most one frame per stream per call, as the engine would give it.
        pending: list[list[Frame]] = [[frame] for _, frame in batch]
        for i, stage in enumerate(self.stages):
            produced: list[list[Frame]] = [[] for _ in batch]
            while any(pending):
                rows = [r for r, frames in enumerate(pending) if frames]
                items = [(batch[r][0][i], pending[r].pop(0)) for r in rows]
                for r, out in zip(rows, stage.process(items)):
                    if isinstance(out, BaseException):
                        raise out
                    produced[r].extend(out)
            pending = produced
        return pending
