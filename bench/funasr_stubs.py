"""Stand-ins for packages the GPU machine lacks, so FunASR's model classes import there (bench only).

FunASR 1.4.16's package imports (audio I/O, tokenisers, hub clients, training tools) at module level, but the
streaming Paraformer's model path (``SANMEncoderChunkOpt``, ``CifPredictorV2``, ``ParaformerSANMDecoder``,
``ParaformerStreaming.generate_chunk``) calls none of them. ``install()`` puts a finder first on ``sys.meta_path``
that answers imports of exactly the names in ``STUBS`` with empty modules whose attributes are inert classes;
everything else imports normally. The benchmark's correctness check (ours vs FunASR, same weights) guards
against a stub standing in for something the model really uses.
"""
import importlib.abc
import importlib.machinery
import sys
import types

class _Dummy:
    def __init__(self, *a, **k):
        pass

    def __call__(self, *a, **k):
        return _Dummy()

    def __getattr__(self, name):
        return _Dummy()


class _StubModule(types.ModuleType):
    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (_Dummy,), {})


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []
        module.__version__ = "99.0.0"  # libraries that check a version see a new one


STUBS = {"modelscope", "transformers", "hydra", "omegaconf", "antlr4", "jieba", "librosa", "lazy_loader", "scipy", "sklearn",
         "kaldiio", "torch_complex", "jaconv", "jamo", "tensorboardX", "rapidfuzz", "tiktoken", "tiktoken_ext", "soundfile",
         "huggingface_hub", "requests", "torchaudio", "rich", "tqdm", "cloudpickle", "joblib", "regex", "umap", "editdistance",
         "oss2", "pytorch_wpe", "hdbscan", "jsonlines", "peft", "openai_whisper", "whisper", "deepspeed", "pydub", "audioread",
         "soxr", "sounddevice", "lightning", "pytorch_lightning", "accelerate", "matplotlib", "pandas", "nltk", "g2p_en",
         "pypinyin", "ffmpeg", "cv2", "PIL", "onnx", "torchvision", "einops", "sentence_transformers", "datasets",
         "safetensors", "websockets", "httpx", "six", "yaml_include", "ruamel", "mmap_ninja", "kaldi_native_fbank"}


class StubFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in STUBS:
            return None
        return importlib.machinery.ModuleSpec(name, _Loader(), is_package=True)


def install():
    sys.meta_path.insert(0, StubFinder())
