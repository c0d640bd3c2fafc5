"""Text-conditioned ensembles: prompts are encoded by MiniLM and steer the experts."""
import pytest
import torch

from atoll.models.dit import DiTConfig
from atoll.sampling import Ensemble
from atoll.sampling.errors import SamplingError


@pytest.fixture(scope="module")
def text_ensemble():
    torch.manual_seed(0)
    m = DiTConfig(size="DiT-XXS/4", input_size=28, in_channels=1, text_dim=384).build()
    with torch.no_grad():  # adaLN-zero starts as the identity: give the conditioning some weight
        for p in m.parameters():
            if p.dim() > 1:
                p.normal_(std=0.02)
    return Ensemble([m], None)


def test_prompts_are_deterministic_and_change_only_their_own_sample(text_ensemble):
    kw = dict(steps=4, guidance=2.0, seed=3, output="float")
    a = text_ensemble.sample(prompts=["a photo of a sneaker", "a photo of a bag"], **kw).images
    b = text_ensemble.sample(prompts=["a photo of a sneaker", "a photo of a bag"], **kw).images
    c = text_ensemble.sample(prompts=["a photo of a coat", "a photo of a bag"], **kw).images
    assert torch.equal(a, b)
    assert (a[0] - c[0]).abs().max() > 1e-4  # the prompt matters
    assert torch.equal(a[1], c[1])          # and only for its own sample


def test_guidance_doubles_expert_rows_with_text(text_ensemble):
    r1 = text_ensemble.sample(prompts="a bag", n=3, steps=2, guidance=1.0)
    r2 = text_ensemble.sample(prompts="a bag", n=3, steps=2, guidance=3.0)
    assert r1.expert_rows == [6] and r2.expert_rows == [12]


def test_text_run_rejects_classes_and_class_run_rejects_prompts(text_ensemble):
    with pytest.raises(SamplingError, match="text-conditioned"):
        text_ensemble.sample(2, class_labels=[1, 2], steps=1)
    cls = Ensemble([DiTConfig(size="DiT-XXS/4", input_size=28, in_channels=1, num_classes=10).build()], None)
    with pytest.raises(SamplingError, match="not text-conditioned"):
        cls.sample(prompts="a bag", steps=1)
