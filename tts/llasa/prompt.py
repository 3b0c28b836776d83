"""Llasa's prompt: the Llama 3 chat template around the text, speech tokens <-> XCodec2 codes.

As Llasa's own inference code: the user turn is ``Convert the text to speech:`` +
``<|TEXT_UNDERSTANDING_START|>{text}<|TEXT_UNDERSTANDING_END|>``, the assistant turn starts with
``<|SPEECH_GENERATION_START|>`` followed by the reference clip's speech tokens (zero-shot; the text is then the
reference transcript + " " + the text to say), rendered by the tokenizer's ``chat_template`` (jinja2, as
``transformers.apply_chat_template`` with ``continue_final_message=True``: the render is cut right after the
assistant's content) and tokenised without adding special tokens. Generation stops at
``<|SPEECH_GENERATION_END|>``. Speech token ``<|s_k|>`` is XCodec2 code k; their ids are contiguous.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

TEXT_START, TEXT_END = "<|TEXT_UNDERSTANDING_START|>", "<|TEXT_UNDERSTANDING_END|>"
SPEECH_START, SPEECH_END = "<|SPEECH_GENERATION_START|>", "<|SPEECH_GENERATION_END|>"
INSTRUCTION = "Convert the text to speech:"


class LlasaTokenizerError(ValueError):
    code = "unsupported_model"


def _render(template: str, messages: list[dict], special: dict, date: str | None) -> str:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise LlasaTokenizerError(f"chat template: {message}")

    def strftime_now(fmt):  # what transformers passes: today's date (Llama 3 templates print it)
        return date if date is not None else datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env.from_string(template).render(messages=messages, add_generation_prompt=False, **special)


@dataclass
class LlasaTokenizer:
    tokenizer: Tokenizer
    chat_template: str
    special: dict  # bos_token, eos_token, ... for the template
    speech_offset: int  # id of <|s_0|>
    speech_count: int
    speech_end: int
    date: str | None = None  # fixed "Today Date" for reproducible prompts; None: today, as transformers

    @classmethod
    def from_folder(cls, folder: str | Path) -> "LlasaTokenizer":
        folder = Path(folder)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        conf = json.loads((folder / "tokenizer_config.json").read_text())
        template = conf.get("chat_template")
        if isinstance(template, list):  # named templates
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template and (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        if not template:
            raise LlasaTokenizerError(f"{folder}: tokenizer_config.json has no chat_template")
        special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in conf.items() if k.endswith("_token") and v}
        ids = {t: tok.token_to_id(t) for t in (SPEECH_START, SPEECH_END, TEXT_START, TEXT_END, "<|s_0|>")}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise LlasaTokenizerError(f"{folder}: not a Llasa tokenizer, it lacks {', '.join(missing)}")
        offset, count = ids["<|s_0|>"], 0
        while tok.token_to_id(f"<|s_{count}|>") == offset + count:
            count += 1
        return cls(tok, template, special, offset, count, ids[SPEECH_END])

    def speech_tokens(self, codes: list[int]) -> str:
        bad = [c for c in codes if not 0 <= c < self.speech_count]
        if bad:  # "<|s_70000|>" would be tokenised as plain text, silently
            raise LlasaTokenizerError(f"speech code {bad[0]} has no token: this tokenizer has <|s_0|>..<|s_{self.speech_count - 1}|> "
                                      f"(a codec with more codes than the Llama has speech tokens?)")
        return "".join(f"<|s_{c}|>" for c in codes)

    def prompt_text(self, text: str, reference_text: str = "", reference_codes: list[int] | None = None) -> str:
        if reference_codes:
            text = f"{reference_text} {text}"
        messages = [
            {"role": "user", "content": f"{INSTRUCTION}{TEXT_START}{text}{TEXT_END}"},
            {"role": "assistant", "content": SPEECH_START + self.speech_tokens(reference_codes or [])},
        ]
        rendered = _render(self.chat_template, messages, self.special, self.date)
        final = messages[-1]["content"]
        cut = rendered.rindex(final) + len(final)  # continue_final_message: no end-of-turn after the assistant's start
        return rendered[:cut]

    def prompt_ids(self, text: str, reference_text: str = "", reference_codes: list[int] | None = None) -> list[int]:
        return self.tokenizer.encode(self.prompt_text(text, reference_text, reference_codes), add_special_tokens=False).ids

    def codes(self, ids: list[int]) -> list[int]:
        """Generated ids -> XCodec2 codes (ids that are not speech tokens are dropped, as Llasa's string parsing does)."""
        return [i - self.speech_offset for i in ids if 0 <= i - self.speech_offset < self.speech_count]
