"""GRAM against hand values (METHODS.md §3): the label-smoothed two-token loss, the label position on right- and
left-padded batches, the readout's symmetry, stage-1 masking, the reward callable, and learning a preference rule."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from recipes.sft.data import IGNORE_INDEX, CompletionCollator
from recipes.sft.gram import (
    GramReward,
    gram_loss,
    gram_scores,
    judge_prompt_ids,
    judge_row,
    label_positions,
    label_token_ids,
    pair_orders,
    pairwise_accuracy,
    pretrain_row,
    readout,
    two_class_loss,
)
from runner.errors import ModelError
from runner.generate import left_pad
from runner.pairs import PreferencePair
from tests.conftest import tiny_model

SHORT = "{prompt}\nA: {response_a}\nB: {response_b}\nBetter: "


@pytest.fixture(scope="module")
def tok():
    from runner.tokenizer import train_tokenizer

    return train_tokenizer(512, chat_template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                                              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>"
                                              "assistant\n{% endif %}")


def test_two_class_loss_hand_values():
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    sig = 1 / (1 + math.exp(-2))
    assert two_class_loss(logits, target, 0.1).item() == pytest.approx(0.226928, abs=1e-6)
    assert two_class_loss(logits, target, 0.1).item() == pytest.approx(-math.log(sig) + 0.05 * 2, abs=1e-6)
    assert two_class_loss(logits, target, 0.0).item() == pytest.approx(0.126928, abs=1e-6)
    # label B with the same logits: z = -2 -> -log sigmoid(-2) - 0.05 * 2
    assert two_class_loss(logits, torch.tensor([1]), 0.1).item() == pytest.approx(-math.log(1 - sig) - 0.1, abs=1e-6)


def test_optimal_margin_of_the_smoothed_loss():
    z = torch.tensor([math.log((2 - 0.1) / 0.1)], requires_grad=True)  # z* = log((2 - eps) / eps) = 2.944
    two_class_loss(torch.stack([z, torch.zeros(1)], 1), torch.tensor([0]), 0.1).backward()
    assert abs(z.grad.item()) < 1e-6


def test_label_position_on_right_and_left_padded_batches():
    right = torch.tensor([[-100, -100, 7, -100, -100], [-100, -100, -100, -100, 8]])
    left = torch.tensor([[-100, -100, -100, -100, 7], [-100, -100, -100, 8, -100]])
    assert label_positions(right).tolist() == [1, 3]
    assert label_positions(left).tolist() == [3, 2]
    with pytest.raises(ValueError, match="no label"):
        label_positions(torch.tensor([[-100, -100]]))
    with pytest.raises(ValueError, match="position 0"):
        label_positions(torch.tensor([[7, -100]]))


def test_gram_loss_reads_the_candidates_at_the_label_position():
    a_id, b_id = 3, 4
    logits = torch.randn(2, 5, 6)
    logits[0, 1, [a_id, b_id]] = torch.tensor([2.0, 0.0])   # row 0 label A at index 2 (right-padded)
    logits[1, 3, [a_id, b_id]] = torch.tensor([2.0, 0.0])   # row 1 label B at index 4
    labels = torch.tensor([[-100, -100, a_id, -100, -100], [-100, -100, -100, -100, b_id]])
    loss = gram_loss(logits, labels, (a_id, b_id), 0.1).item()
    assert loss == pytest.approx((0.226928 + (-math.log(1 - 1 / (1 + math.exp(-2))) - 0.1)) / 2, abs=1e-5)
    with pytest.raises(ValueError, match="not A"):
        gram_loss(logits, torch.tensor([[-100, 5, -100, -100, -100]] * 2), (a_id, b_id))


def test_gram_loss_is_the_same_on_right_and_left_padding(tok):
    model = tiny_model("qwen2").eval()
    ids = label_token_ids(tok)
    rows = [judge_row(judge_prompt_ids("Hi?", "hello there", "go away", tok, False, SHORT), ids[0]),
            judge_row(judge_prompt_ids("Sum?", "no", "it is four", tok, False, SHORT), ids[1])]
    right = CompletionCollator(tok.pad_token_id)(rows)
    l_ids, l_mask = left_pad([r["input_ids"] for r in rows], tok.pad_token_id)
    l_labels = torch.full_like(l_ids, IGNORE_INDEX)
    for i, r in enumerate(rows):
        l_labels[i, l_ids.shape[1] - len(r["labels"]):] = torch.tensor(r["labels"])
    with torch.no_grad():
        lr = gram_loss(model(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits,
                       right["labels"], ids, 0.1)
        ll = gram_loss(model(input_ids=l_ids, attention_mask=l_mask).logits, l_labels, ids, 0.1)
    assert lr.item() == pytest.approx(ll.item(), abs=1e-4)


def test_readout_hand_values_and_symmetry():
    equal = torch.zeros(3, 2)
    sa, sb = readout(equal, equal)
    assert sa.tolist() == sb.tolist() == [0.5, 0.5, 0.5]
    ab, ba = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    sa, sb = readout(ab, ba)
    sig = 1 / (1 + math.exp(-2))
    assert sa.item() == pytest.approx((sig + 0.5) / 2, abs=1e-6) and sb.item() == pytest.approx(1 - sa.item())
    swapped = readout(ba, ab)  # swapping a and b swaps which prompt is (a, b)
    assert swapped[0].item() == pytest.approx(sb.item()) and swapped[1].item() == pytest.approx(sa.item())


def test_model_scores_swap_with_the_responses(tok):
    model = tiny_model("qwen2", seed=1)
    fwd = gram_scores(model, tok, ["Q1", "Q2"], ["alpha beta", "x"], ["gamma", "y z w"], template=SHORT)
    back = gram_scores(model, tok, ["Q1", "Q2"], ["gamma", "y z w"], ["alpha beta", "x"], template=SHORT)
    for (a, b), (b2, a2) in zip(fwd, back):
        assert a == pytest.approx(a2, abs=1e-5) and b == pytest.approx(b2, abs=1e-5)
        assert a + b == pytest.approx(1.0, abs=1e-6)
    assert gram_scores(model, tok, ["Q"], ["a"], ["b"], template=SHORT, max_len=5) == [None]


def test_readout_position_is_the_trained_position(tok):
    """The readout reads the position stage 2 trains (the one before the label token), in both orders."""
    model = tiny_model("qwen2", seed=2).eval()
    ids = label_token_ids(tok)
    probs = []
    for a, b in (("a", "b"), ("b", "a")):
        prompt = judge_prompt_ids("Q", a, b, tok, False, SHORT)
        batch = CompletionCollator(tok.pad_token_id)([judge_row(prompt, ids[0])])
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits
        pos = label_positions(batch["labels"])[0]
        assert pos == len(prompt) - 1
        probs.append(torch.softmax(logits[0, pos, list(ids)], -1))
        # the trained loss at eps 0 is -log p(A) at that position
        assert gram_loss(logits, batch["labels"], ids, 0.0).item() == pytest.approx(-math.log(probs[-1][0]), abs=1e-5)
    score_a, score_b = gram_scores(model, tok, ["Q"], ["a"], ["b"], template=SHORT)[0]
    assert score_a == pytest.approx((probs[0][0] + probs[1][1]).item() / 2, abs=1e-5)  # p(A | a,b), p(B | b,a)
    assert score_b == pytest.approx((probs[0][1] + probs[1][0]).item() / 2, abs=1e-5)


def test_stage1_loss_mask_covers_the_output_span_only(tok):
    row = pretrain_row("What is up?", "all good", "nothing", tok, use_chat_template=True)
    n_prompt = sum(x == IGNORE_INDEX for x in row["labels"])
    assert row["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert tok.decode(row["input_ids"][:n_prompt]).endswith("[User Question]\nWhat is up?\n\n<|im_end|>\n"
                                                            "<|im_start|>assistant\n")
    out = tok.decode(row["labels"][n_prompt:-1])
    assert out == ("[The Start of Assistant A's Answer]\nall good\n[The End of Assistant A's Answer]\n\n"
                   "[The Start of Assistant B's Answer]\nnothing\n[The End of Assistant B's Answer]")
    assert row["labels"][-1] == tok.eos_token_id


def test_label_tokens_must_be_single_tokens():
    class Splitting:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [5, 6] if text == "A" else [7]}

    with pytest.raises(ModelError, match="single, distinct tokens"):
        label_token_ids(Splitting())


def test_pair_orders():
    assert pair_orders(2, "both", 0) == [[True, False], [True, False]]
    flips = [o[0] for o in pair_orders(400, "random", 0)]
    assert all(len(o) == 1 for o in pair_orders(3, "random", 0)) and 150 < sum(flips) < 250
    assert pair_orders(5, "random", 1) == pair_orders(5, "random", 1)


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy([(0.7, 0.3), (0.4, 0.6), (0.5, 0.5), (0.9, 0.1)]) == pytest.approx(2.5 / 4)


def test_reward_function_scores_completions_against_references(tok, tmp_path):
    model = tiny_model("qwen2", seed=3)
    reward = GramReward(model, tok, reference_key="reference", template=SHORT)
    assert reward.__name__ == "gram"
    out = reward(prompts=["Q1", "Q2"], completions=["good answer", "bad"], reference=["ref one", "ref two"],
                 completion_ids=[[1], [2]], trainer_state=None)
    expected = gram_scores(model, tok, ["Q1", "Q2"], ["good answer", "bad"], ["ref one", "ref two"], template=SHORT)
    assert out == pytest.approx([s[0] for s in expected]) and all(0 < x < 1 for x in out)
    chat = reward(prompts=[[{"role": "user", "content": "Q1"}]],
                  completions=[[{"role": "assistant", "content": "good answer"}]], reference=["ref one"])
    assert chat == pytest.approx(out[:1])
    with pytest.raises(ValueError, match="reference="):
        reward(prompts=["Q"], completions=["c"])
    with pytest.raises(ValueError, match="equal in number"):
        reward(prompts=["Q"], completions=["c"], reference=["r", "s"])
    # loaded from a saved checkpoint dir, as an RL run would
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    loaded = GramReward(Path(tmp_path / "ckpt"), reference_key="reference", template=SHORT)
    assert loaded(prompts=["Q1"], completions=["good answer"], reference=["ref one"]) == pytest.approx(out[:1],
                                                                                                      abs=1e-5)


def test_group_mode_rewards_sum_to_half_the_group(tok):
    model = tiny_model("qwen2", seed=4)
    reward = GramReward(model, tok, template=SHORT)  # no reference: each completion against its group
    prompts = ["P"] * 3 + ["Q"] * 2 + ["R"]
    completions = ["one", "two words", "three words here", "x", "y y", "alone"]
    out = reward(prompts=prompts, completions=completions)
    assert sum(out[:3]) == pytest.approx(3 / 2, abs=1e-5) and sum(out[3:5]) == pytest.approx(1.0, abs=1e-5)
    assert out[5] == 0.5  # a prompt with one completion gets the default
    pair = gram_scores(model, tok, ["Q"], ["x"], ["y y"], template=SHORT)[0]
    assert out[3:5] == pytest.approx(list(pair), abs=1e-5)
    first = gram_scores(model, tok, ["P", "P"], ["one", "one"], ["two words", "three words here"], template=SHORT)
    assert out[0] == pytest.approx((first[0][0] + first[1][0]) / 2, abs=1e-5)


def test_registry_function_takes_the_model_from_reward_options(tok, tmp_path):
    from recipes.rl.rewards import get_reward
    from recipes.sft import gram

    with pytest.raises(ValueError, match="method.reward_options.gram.model_path"):
        gram.gram_reward(prompts=["Q"], completions=["c"])
    model = tiny_model("qwen2", seed=5)
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    reward = get_reward("gram", {"model_path": str(tmp_path / "ckpt")})  # as the RL recipe builds it
    assert reward.__name__ == "gram"
    direct = GramReward(model, tok, reference_key="reference")  # the full judge prompt, as gram_reward uses
    got = reward(prompts=["Q"], completions=["c"], reference=["r"], answer=["1"])
    assert got == pytest.approx(direct(prompts=["Q"], completions=["c"], reference=["r"]), abs=1e-5)
    grouped = reward(prompts=["Q", "Q"], completions=["c", "d"], answer=["1", "1"])
    assert sum(grouped) == pytest.approx(1.0, abs=1e-5)


def test_rl_config_requires_the_gram_model_path(compose_cfg):
    from runner.config import validate
    from runner.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        validate(compose_cfg("method=grpo", "method.rewards=[math_correct,gram]"))
    assert "method.reward_options.gram.model_path" in info.value.paragraph()
    validate(compose_cfg("method=grpo", "method.rewards=[math_correct,gram]",
                         "+method.reward_options.gram.model_path=/some/dir"))


@pytest.mark.slow
def test_stage2_learns_a_preference_rule(tok):
    """~30 steps of stage 2 on 'the longer response is preferred' lift pairwise accuracy on held-out pairs."""
    rnd = random.Random(0)
    words = ["red", "blue", "cat", "dog", "sun", "tree"]

    def pair(i):
        long = " ".join(rnd.choice(words) for _ in range(rnd.randint(5, 8)))
        short = " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 3)))
        return PreferencePair(str(i), "Say something.", long, short)

    train, test = [pair(i) for i in range(256)], [pair(1000 + i) for i in range(64)]
    ids = label_token_ids(tok)
    rows = [judge_row(judge_prompt_ids(p.prompt, a, b, tok, False, SHORT), ids[0] if first else ids[1])
            for p in train for first, (a, b) in ((True, (p.chosen, p.rejected)), (False, (p.rejected, p.chosen)))]
    torch.manual_seed(0)
    model = tiny_model("qwen2")

    def accuracy():
        return pairwise_accuracy(gram_scores(model, tok, [p.prompt for p in test], [p.chosen for p in test],
                                             [p.rejected for p in test], template=SHORT, batch_size=64))

    before = accuracy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    collate, pick = CompletionCollator(tok.pad_token_id), random.Random(1)
    for _ in range(30):
        batch = collate(pick.sample(rows, 16))
        model.train()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = gram_loss(out.logits, batch["labels"], ids, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert after > 0.7 and after > before + 0.15, (before, after)
