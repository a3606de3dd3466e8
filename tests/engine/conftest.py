import pytest

from tests.scripts.helpers import make_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny UNETR saved as the training script saves it."""
    return make_tiny_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))
