"""The bulk path (arrays of streams, one batched step per model chunk) gives each stream the tokens of the
general step sequence (offline mel frames, first step then steady steps, encoder.stream_step + CTC greedy),
whatever the push sizes, the order streams join in and the batches they share; bad input is refused."""

import time

import numpy as np
import pytest
import torch

from legato.asr.fastconformer.bulk import FLUSH_MAX_GAP_S, FLUSH_WAIT_S, QUEUED_CHUNKS, BulkTranscriber
from legato.asr.fastconformer.recognizer import FastConformerRecognizer
from legato.stream.errors import CapacityError, NonFiniteAudioError

from conftest import FIXTURES

NEMO = FIXTURES / "nemo"


@pytest.fixture(scope="module", params=[("hybrid_tiny", "ctc"), ("ctc_tiny", "ctc"), ("rnnt_tiny", "rnnt"), ("hybrid_tiny", "rnnt")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def case(request):
    """(recognizer, the decoder the bulk path runs)."""
    name, decoder = request.param
    return FastConformerRecognizer.from_nemo(NEMO / f"{name}.nemo"), decoder


def reference(rec, decoder: str, audio: np.ndarray, steps: int, lookahead_ms):
    """Tokens and frames of ``steps`` encoder steps over the offline mel frames (what the engine stage feeds)."""
    mel = rec.mel(torch.from_numpy(audio)[None])
    enc, greedy = rec.model.encoder, rec.model.greedy_decoder(decoder)
    la = rec.lookahead_index(lookahead_ms)
    state, dec_state = enc.init_state(1), greedy.init_state(1)
    pos, done, tokens, frames, mels = 0, 0, [], [], []
    for k in range(steps):
        n = enc.expected_mel(la, k == 0)
        mels.append(mel[:, pos:pos + n])
        y, valid = enc.stream_step(mel[:, pos:pos + n], state, lookahead=la, first=k == 0)
        toks, frs = greedy.decode(y, valid, dec_state)
        tokens += toks[0]
        frames += [done + f for f in frs[0]]
        pos, done = pos + n, done + y.shape[1]
    return tokens, frames, done


@pytest.mark.parametrize("pipeline", [False, True], ids=["serial", "pipelined"])
@pytest.mark.parametrize("lookahead_ms", [0, 240])
def test_streams_joining_at_different_times_get_the_reference_tokens(case, lookahead_ms, pipeline):
    """``pipeline``: each step completes the one before (CTC; RNNT runs serial whatever the flag)."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=4, lookahead_ms=lookahead_ms, pipeline=pipeline)
    if lookahead_ms not in rec.lookaheads_ms:
        pytest.skip(f"the model's lookaheads are {rec.lookaheads_ms}")
    rng = np.random.default_rng(0)
    steps = 6
    audios = [(rng.standard_normal(bulk.chunk * (steps + 1)) * 0.3).astype(np.float32) for _ in range(3)]
    slots, sent = [], [0, 0, 0]
    for tick in range(4 * steps):
        if tick in (0, 3, 7):  # streams join at different times, so first and steady steps share calls
            slots.append(bulk.open())
        for s, slot in enumerate(slots):
            if sent[s] < bulk.chunk * steps:
                n = min(int(rng.integers(100, bulk.chunk)), bulk.chunk * steps - sent[s])  # odd push sizes
                bulk.push(slot, audios[s][sent[s]:sent[s] + n])
                sent[s] += n
        bulk.step()
    while bulk.step():
        pass
    assert len(bulk.latencies()) == 3 * steps and (bulk.latencies() >= 0).all()
    for s, slot in enumerate(slots):
        tokens, frames, done = reference(rec, dec, audios[s], steps, lookahead_ms)  # the batched steady steps
        stream = bulk.streams[slot]
        assert (stream.tokens, stream.token_frames, bulk._frames[slot]) == (tokens, frames, done)
        got = bulk.finish(slot)  # then the end of the stream: offline decoding of all it pushed
        offline = rec.transcribe_tokens(torch.from_numpy(audios[s][: bulk.chunk * steps]), lookahead_ms, dec)
        assert (got.tokens, got.token_frames) == offline


def test_bulk_mel_equals_the_offline_frames(case):
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=2, lookahead_ms=0)
    audio = (np.random.default_rng(1).standard_normal(bulk.chunk * 5) * 0.3).astype(np.float32)
    offline = rec.mel(torch.from_numpy(audio)[None])[0]
    rows, got = torch.tensor([1]), []
    for k in range(4):
        chunk = torch.from_numpy(audio[k * bulk.chunk:(k + 1) * bulk.chunk])[None]
        got.append(bulk._log_mel(rows, chunk, first=k == 0)[0])
    got = torch.cat(got)
    torch.testing.assert_close(got, offline[:len(got)], atol=1e-5, rtol=1e-5)


def test_bad_input_is_refused_and_the_queue_is_bounded(case):
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=1)
    slot = bulk.open()
    with pytest.raises(NonFiniteAudioError):
        bulk.push(slot, np.array([0.0, np.nan], np.float32))
    bulk.push(slot, np.zeros(bulk.chunk * QUEUED_CHUNKS, np.float32))
    with pytest.raises(CapacityError, match="behind"):
        bulk.push(slot, np.zeros(1, np.float32))
    with pytest.raises(CapacityError, match="full"):
        bulk.open()
    with pytest.raises(KeyError):
        bulk.push(slot + 1, np.zeros(1, np.float32))
    assert bulk.step() == 1 and bulk.finish(slot).frames_done > 0
    assert bulk.open() == slot  # the slot is free again


def test_push_many_equals_pushing_one_by_one(case):
    rec, dec = case
    steps = 3
    one, many = (BulkTranscriber(rec, decoder=dec, capacity=3) for _ in range(2))
    audio = (np.random.default_rng(2).standard_normal((3, one.chunk * steps)) * 0.3).astype(np.float32)
    a, b = [one.open() for _ in range(3)], np.array([many.open() for _ in range(3)])
    for k in range(steps):
        part = audio[:, k * one.chunk:(k + 1) * one.chunk]
        for s in range(3):
            one.push(a[s], part[s])
        assert not many.push_many(b, part).any()
        one.step(), many.step()
    for s in range(3):
        x, y = one.finish(a[s]), many.finish(int(b[s]))
        assert (x.tokens, x.token_frames, x.frames_done) == (y.tokens, y.token_frames, y.frames_done)
    slot = many.open()
    for _ in range(QUEUED_CHUNKS):
        many.push_many(np.array([slot]), audio[:1, :many.chunk])
    assert many.push_many(np.array([slot]), audio[:1, :many.chunk]).all()  # the full queue refuses, no raise


@pytest.mark.parametrize("seconds", [0.05, 0.5, 1.37])
def test_whole_stream_with_finish_equals_offline(case, seconds):
    """Streamed through the bulk path (batched steady steps, then finish's last steps) = offline decoding."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=2)
    audio = (np.random.default_rng(3).standard_normal(int(16000 * seconds)) * 0.3).astype(np.float32)
    other = bulk.open()  # a second stream sharing the batches
    slot = bulk.open()
    for i in range(0, len(audio), 700):
        bulk.push(slot, audio[i:i + 700])
        bulk.push(other, audio[i:i + 700])
        bulk.step()
    got = bulk.finish(slot)
    tokens, frames = rec.transcribe_tokens(torch.from_numpy(audio), bulk.recognizer.lookaheads_ms[bulk.lookahead], dec)
    assert (got.tokens, got.token_frames) == (tokens, frames)
    assert bulk.finish(other).tokens == tokens


@pytest.mark.parametrize("second", [300, 2560 * 3 + 77])
def test_a_reused_slot_starts_clean(case, second):
    """A slot's next stream (its state reset by its first step, not at open) decodes as if the slot were new,
    also when it ends before a first whole chunk (the reset then happens in its end's steps)."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=1)
    rng = np.random.default_rng(5)
    first_audio = (rng.standard_normal(2560 * 4 + 500) * 0.3).astype(np.float32)
    slot = bulk.open()
    bulk.push(slot, first_audio)
    while bulk.step():
        pass
    bulk.finish(slot)
    audio = (rng.standard_normal(second) * 0.3).astype(np.float32)
    assert bulk.open() == slot
    bulk.push(slot, audio)
    while bulk.step():
        pass
    got = bulk.finish(slot)
    assert (got.tokens, got.token_frames) == rec.transcribe_tokens(torch.from_numpy(audio), bulk.recognizer.lookaheads_ms[bulk.lookahead], dec)


@pytest.mark.parametrize("pipeline", [False, True], ids=["serial", "pipelined"])
def test_streams_ended_together_step_their_ends_as_one_batch_and_equal_offline(case, pipeline):
    """end() on streams of many lengths (none, part of a first chunk, whole chunks, chunks and a bit, with chunks
    still queued): their last steps run batched inside step(), on_finish gets each once, each equals offline.
    Pipelined, a stream whose last chunk is in flight ends only after that step's tokens are read."""
    rec, dec = case
    lengths = [0, 300, 2560 * 2, 9000, 16000, 23456]
    done = {}
    bulk = BulkTranscriber(rec, decoder=dec, capacity=len(lengths) + 1, on_finish=lambda items: done.update(items),
                           pipeline=pipeline)
    rng = np.random.default_rng(7)
    audios = [(rng.standard_normal(n) * 0.3).astype(np.float32) for n in lengths]
    slots = [bulk.open() for _ in lengths]
    for i in range(0, max(lengths), 1200):
        for s, a in zip(slots, audios):
            if i < len(a):
                bulk.push(s, a[i:i + 1200])
        if i % 4800 == 0:
            bulk.step()
    for s in slots:
        bulk.end(s)
    with pytest.raises(KeyError):
        bulk.push(slots[0], audios[1][:10])  # an ended stream takes no more audio
    calls = 0
    while len(done) < len(slots):
        bulk.step()
        calls += 1
        assert calls < 20
    for s, a in zip(slots, audios):
        tokens, frames = rec.transcribe_tokens(torch.from_numpy(a), bulk.recognizer.lookaheads_ms[bulk.lookahead], dec) if len(a) else ([], [])
        assert (done[s].tokens, done[s].token_frames) == (tokens, frames), len(a)
    assert bulk.open() in slots  # the slots are free again


def test_pool_reset_rows_equals_reset(case):
    """``reset_rows`` (zero leaves filled in place, the others copied) puts the rows at the fresh state, as the
    expanded copy it replaced did, and leaves every other row as it was."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=5)
    for pool in (bulk.pool, bulk.dec_pool):
        for _, t in pool.state.leaves():
            t.copy_(torch.randn(t.shape).to(t.dtype) if t.is_floating_point() else torch.randint(-5, 5, t.shape).to(t.dtype))
        want = pool.state.clone()
        for (_, w), (_, f) in zip(want.leaves(), pool._fresh.leaves()):
            w[[1, 3]] = f.expand((2,) + f.shape[1:])
        pool.reset_rows(torch.tensor([1, 3]))
        assert all(torch.equal(x, y) for (_, x), (_, y) in zip(want.leaves(), pool.state.leaves()))


def test_pipelined_steps_complete_the_step_before_and_cancel_settles(case):
    """Pipelined (CTC), a step's tokens reach ``on_step`` during the next call; an idle call completes the last;
    cancelling a stream whose chunk is in flight completes that step first, and the other stream is unaffected."""
    rec, dec = case
    if dec != "ctc":
        pytest.skip("pipelining is for CTC")
    seen, decoded = [], []

    def on_step(rows, updates):
        seen.append(rows.tolist())
        decoded.append(bulk.frames_decoded(rows).tolist())  # as of the completed step, not the one in flight

    bulk = BulkTranscriber(rec, decoder=dec, capacity=2, pipeline=True, on_step=on_step)
    rng = np.random.default_rng(3)
    audio = (rng.standard_normal(bulk.chunk * 4) * 0.3).astype(np.float32)
    a, b = bulk.open(), bulk.open()
    bulk.push_many(np.array([a, b]), np.stack([audio[: bulk.chunk]] * 2))
    assert bulk.step() == 2 and seen == []  # launched, not completed
    bulk.push(a, audio[bulk.chunk: 2 * bulk.chunk])
    assert bulk.step() == 1 and seen == [[a, b]]  # the first step completed by the second's call
    bulk.cancel(b)  # nothing of b in flight now; a's second step is
    assert seen == [[a, b], [a]]
    bulk.push(a, audio[2 * bulk.chunk: 3 * bulk.chunk])
    bulk.step()
    assert bulk.step() == 1 and bulk.step() == 0 and seen[-1] == [a]  # the idle call completed the last
    tokens, frames, done = reference(rec, dec, audio, 3, None)
    assert (bulk.streams[a].tokens, bulk.streams[a].token_frames, bulk._frames[a]) == (tokens, frames, done)
    first = reference(rec, dec, audio, 1, None)[2]
    assert decoded[0] == [first, first] and decoded[-1] == [done]  # a's frames after its 1st step, then its 3rd


def test_device_step_keeps_no_autograd_history_whoever_calls(case):
    """A server's warm-up captures graphs outside ``step``: the device step must not record autograd history into
    the pool's rows (it kept every capture's activations alive: out of GPU memory at warm-up)."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=2)
    assert any(p.requires_grad for p in rec.model.parameters())  # the case the fix is for
    audio = torch.from_numpy((np.random.default_rng(4).standard_normal((2, bulk.chunk)) * 0.3).astype(np.float32))
    with torch.enable_grad():
        out = bulk.device_step(torch.tensor([0, 1]), audio, True)
    assert not any(t.requires_grad or t.grad_fn is not None for t in out)
    for pool in (bulk.pool, bulk.dec_pool):
        assert not any(t.requires_grad or t.grad_fn is not None for _, t in pool.state.leaves())


def test_step_windows_say_where_the_stepping_thread_spends_its_time(case):
    """Each step call's take / launch / wait / finish / ends seconds reach the stats window (mean ms per step)."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=2, pipeline=True)
    slots = bulk.open_many(2)
    audio = (np.random.default_rng(5).standard_normal((2, bulk.chunk)) * 0.3).astype(np.float32)
    bulk.windows.read()
    for _ in range(3):
        bulk.push_many(slots, audio)
        bulk.step()
    window = bulk.windows.read()
    assert set(window.phases_ms()) == {"take", "launch", "wait", "finish", "ends"}
    assert window.phases_ms()["launch"] > 0 and "per step take" in window.line()


def test_flushes_of_ended_streams_are_spaced_by_what_they_cost(case):
    """While others step, ended streams wait until the last flush is ``f (1/FLUSH_SHARE - 1)`` seconds old (a flush
    costs about the same for one stream or a thousand), at most ``FLUSH_MAX_GAP_S``; an idle worker flushes at once."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=2)
    a, b = bulk.open_many(2)
    chunk = (np.random.default_rng(6).standard_normal(bulk.chunk) * 0.3).astype(np.float32)
    bulk.push_many(np.array([a, b]), np.stack([chunk, chunk]))
    bulk.step()
    bulk.end(a)
    bulk._flushed_at, bulk._flush_s = time.monotonic(), 0.1  # as if a 0.1 s flush had just finished
    for _ in range(2):
        time.sleep(FLUSH_WAIT_S)
        bulk.push(b, chunk)
        assert bulk.step() == 1 and a in bulk.streams  # b stepped, a's end still waits (0.3 s gap)
    assert bulk.step() == 1 and a not in bulk.streams  # idle: flushed
    c = bulk.open()
    bulk.push_many(np.array([b, c]), np.stack([chunk, chunk]))
    bulk.step()
    bulk.end(c)
    bulk._flushed_at, bulk._flush_s = time.monotonic(), 10.0  # a long flush: the gap is capped
    time.sleep(FLUSH_MAX_GAP_S)
    bulk.push(b, chunk)
    assert bulk.step() == 2 and c not in bulk.streams  # b stepped and c's end flushed though others step


class _SmallGraphs:
    """``BulkGraphs``' interface on the CPU: buckets of up to 2 rows (first steps: 1); a replay is the eager step
    (outputs are fresh tensors here, where a graph's would be its static buffers)."""

    def __init__(self, bulk):
        self.bulk, self.buckets, self.first_buckets, self.calls = bulk, [1, 2], [1], []

    def covers(self, n: int, first: bool) -> bool:
        return n <= (self.first_buckets if first else self.buckets)[-1]

    def run(self, rows, audio, first):
        self.calls.append((len(rows), first))
        return self.bulk.device_step(torch.from_numpy(rows), audio, first)


def test_steps_larger_than_the_graphs_replay_them_on_pieces_and_equal_the_reference(case):
    """5 streams stepped together with graphs of at most 2 rows (first steps 1): every piece fits a bucket, pieces
    are equal in size, and each stream gets the reference tokens."""
    rec, dec = case
    bulk = BulkTranscriber(rec, decoder=dec, capacity=5, max_batch=5, pipeline=True)
    bulk.graphs = _SmallGraphs(bulk)
    rng = np.random.default_rng(7)
    steps = 3
    audio = (rng.standard_normal((5, bulk.chunk * steps)) * 0.3).astype(np.float32)
    slots = bulk.open_many(5)
    for k in range(steps):
        bulk.push_many(slots, audio[:, k * bulk.chunk:(k + 1) * bulk.chunk])
        assert bulk.step() == 5
    bulk.settle()
    assert bulk.graphs.calls[:5] == [(1, True)] * 5  # first steps: pieces of 1
    assert bulk.graphs.calls[5:] == [(2, False), (2, False), (1, False)] * (steps - 1)  # 5 = 2 + 2 + 1 (ceil(5/2) rows)
    for i, s in enumerate(slots.tolist()):
        tokens, frames, done = reference(rec, dec, audio[i], steps, None)
        assert (bulk.streams[s].tokens, bulk.streams[s].token_frames, int(bulk._frames[s])) == (tokens, frames, done)
