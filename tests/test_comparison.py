"""The comparison behind ``chatrlhf compare`` and the e2e report: each model asked in its own chat template, and
fixed reference answers (the demonstrators) scored beside the models. Generation is scripted, so these are fast."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from chatrlhf.utils import comparison
from chatrlhf.utils.comparison import ComparisonSettings, compare_models
from chatrlhf.utils.data.synthetic_tasks import answer, demonstrations, held_out_prompts, score

CHATML_JINJA = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ChatTokenizer(SimpleNamespace):
    """The part of a tokenizer the model template reads: its chat template."""

    chat_template = CHATML_JINJA

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        import jinja2

        return jinja2.Template(self.chat_template).render(messages=messages,
                                                          add_generation_prompt=add_generation_prompt)


@pytest.fixture
def scripted(monkeypatch) -> list[list[str]]:
    """Models that answer every prompt rightly; records the prompts each generation call got."""
    asked: list[list[str]] = []

    def generate(model, tokenizer, prompts, settings):
        asked.append(list(prompts))
        return [" " + answer(prompt) for prompt in prompts]

    monkeypatch.setattr(comparison, "generate", generate)
    monkeypatch.setattr("chatrlhf.utils.model.inference.load_for_inference",
                        lambda name, data: (object(), ChatTokenizer()))
    return asked


def test_the_model_template_asks_each_model_in_its_chat_format(scripted) -> None:
    result = compare_models(ComparisonSettings(models={"a": "x"}, synthetic=6, synthetic_template="model"))
    (prompts,) = scripted
    assert all(p.startswith("<|im_start|>user\n") and p.endswith("<|im_start|>assistant\n") for p in prompts)
    assert [answer(p) for p in prompts] == [answer(p) for p in held_out_prompts(1234, 6)]
    assert result.accuracy["a"]["overall"] == 1.0


def test_reference_answers_are_scored_beside_the_models(scripted) -> None:
    shown = demonstrations(1234, 20)
    result = compare_models(ComparisonSettings(models={"a": "x"}, synthetic=20, sampled=2,
                                               references={"demonstrators": [a for _, a in shown]}))
    right = sum(score(p, a) for p, a in shown) / len(shown)
    assert 0 < right < 1  # the demonstrators slip
    assert result.accuracy["demonstrators"]["overall"] == result.pass_at_1["demonstrators"]["overall"] == right
    assert "| demonstrators |" in result.markdown()
    with pytest.raises(ValueError, match="3 answers for 20 prompts"):
        compare_models(ComparisonSettings(models={}, synthetic=20, references={"short": ["a", "b", "c"]}))
