"""llm_prompt on a tiny random-weight causal LM: exact scores, exact cache, chat and raw
prompts, truncation, order, failures, clear errors."""
from __future__ import annotations

import random

import pytest
import torch

from classifiers.poison import classify_isolating
from classifiers.registry import ClassifierConfigError, build_classifier, preflight
from tests.tiny_llm import ROOT

PROMPT = str(ROOT / "configs" / "prompts" / "intergroup.yaml")
POSTS = ["Democrats and Republicans are at each other's throats again over the new law.",
         "My cat refuses to get off my keyboard.",
         "ok " * 120 + "and the farmers and the city folks came together in the end.",
         "Why?"]


def _clf(path, **params):
    params.setdefault("prompt_file", PROMPT)
    return build_classifier("llm_prompt", {"model": path, "device": "cpu",
                                           "precision": "fp32", **params})


def _by_hand(clf, text):
    """The plain model on the full token sequence of each answer, no cache, no padding."""
    post = clf.tokenizer(text, add_special_tokens=False, truncation=True,
                         max_length=clf.max_post_tokens)["input_ids"]
    context = clf.pieces.prefix + post + clf.pieces.suffix
    scores = []
    for answer in clf.pieces.answers:
        ids = torch.tensor([context + answer])
        with torch.no_grad():
            logp = torch.log_softmax(clf.lm(input_ids=ids).logits[0].float(), dim=-1)
        scores.append(sum(float(logp[len(context) - 1 + k, t]) for k, t in enumerate(answer)))
    return torch.softmax(torch.tensor(scores), dim=0)


@pytest.mark.parametrize("kind,chat", [("chat", True), ("raw", False)])
def test_probabilities_equal_a_hand_computation_on_the_full_prompt(tiny_llm, kind, chat):
    clf = _clf(tiny_llm[kind], chat=chat, mini_batch_size=4)
    rows = clf.classify(POSTS)
    for text, row in zip(POSTS, rows):
        expected = _by_hand(clf, text)
        assert row["prob_1"] == pytest.approx(float(expected[0]), abs=1e-5)
        assert row["prob_0"] == pytest.approx(float(expected[1]), abs=1e-5)
        assert row["label"] in (0, 1) and type(row["label"]) is int
        assert row["label"] == (1 if row["prob_1"] > row["prob_0"] else 0)


def test_shared_prompt_cache_is_exact_in_a_padded_mini_batch(tiny_llm):
    clf = _clf(tiny_llm["chat"], chat=True, mini_batch_size=8)
    assert clf.prefix_cache is not None and len(clf.pieces.prefix) > 500
    posts = POSTS + ["a", "word " * 200]  # 1 to 200+ tokens in one padded mini-batch
    cached = clf.choice_logprobs(posts, use_cache=True)
    full = clf.choice_logprobs(posts, use_cache=False)
    assert torch.allclose(cached, full, atol=1e-4)
    hand = torch.stack([_by_hand(clf, t) for t in posts])
    assert torch.allclose(torch.softmax(cached, -1), hand, atol=1e-4)


def test_the_cache_stays_exact_over_many_mini_batches_and_calls(tiny_llm):
    """A cache that a mini-batch mutated would give the next ones wrong results: several
    cached mini-batches in a row, over three calls, single- and multi-token answers."""
    posts = [f"post {i} about " + "groups " * (i % 7) for i in range(23)]
    for choices in ({1: "1", 0: "0"}, {"yes": " yes, between groups", "no": " no"}):
        clf = _clf(tiny_llm["chat"], chat=True, mini_batch_size=3, choices=choices)
        full = clf.choice_logprobs(posts, use_cache=False)
        for _ in range(3):  # 8 cached mini-batches per call
            assert torch.allclose(clf.choice_logprobs(posts, use_cache=True), full, atol=1e-4)


def test_multi_token_answers_sum_their_token_log_probs(tiny_llm):
    choices = {"yes": " yes, between groups", "no": " no", "unsure": " cannot tell"}
    clf = _clf(tiny_llm["raw"], choices=choices)
    assert not clf.single_token and max(len(a) for a in clf.pieces.answers) > 2
    rows = clf.classify(POSTS)
    for text, row in zip(POSTS, rows):
        hand = _by_hand(clf, text)
        got = torch.tensor([row["prob_yes"], row["prob_no"], row["prob_unsure"]])
        assert torch.allclose(got, hand, atol=1e-5)
    cached = clf.choice_logprobs(POSTS)
    assert torch.allclose(cached, clf.choice_logprobs(POSTS, use_cache=False), atol=1e-4)


def test_chat_and_raw_prompts_and_answers_kept_apart(tiny_llm):
    chat = _clf(tiny_llm["chat"], chat=True)
    raw = _clf(tiny_llm["chat"], chat=False, prompt_file=None,
               template=open(PROMPT).read().split("template: |\n")[1].split("\n# label")[0],
               choices={1: "1", 0: "0"})
    tok = chat.tokenizer
    assert tok.decode(chat.pieces.prefix).startswith("<|im_start|>system\nYou are a careful")
    assert tok.decode(chat.pieces.suffix).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>" not in tok.decode(raw.pieces.prefix)
    assert chat.pieces.answers == [tok("1", add_special_tokens=False)["input_ids"],
                                   tok("0", add_special_tokens=False)["input_ids"]]


def test_answer_is_never_merged_into_the_prompts_last_token(tiny_llm):
    """Tokenising prompt and answer as one string would merge "grou" + "ps" into "groups";
    the answer must be scored as its own tokens after the prompt's."""
    clf = _clf(tiny_llm["raw"], prompt_file=None, choices={1: "ps", 0: "nds"},
               template="Post: {text}\nThe post is about grou")
    tok = clf.tokenizer
    ps = tok("ps", add_special_tokens=False)["input_ids"]
    assert clf.pieces.answers[0] == ps
    assert clf.pieces.suffix == tok("\nThe post is about grou",
                                    add_special_tokens=False)["input_ids"]
    joined = tok("\nThe post is about groups", add_special_tokens=False)["input_ids"]
    assert joined != clf.pieces.suffix + ps  # BPE would have merged them
    row = clf.classify(["farmers and city folks"])[0]
    hand = _by_hand(clf, "farmers and city folks")
    assert row["prob_1"] == pytest.approx(float(hand[0]), abs=1e-5)


def test_long_post_is_cut_and_the_instructions_survive(tiny_llm):
    clf = _clf(tiny_llm["chat"], chat=True, max_post_tokens=16)
    huge = "group conflict " * 100_000  # ~1.5 MB
    head = clf.tokenizer.decode(clf.tokenizer(huge, add_special_tokens=False)["input_ids"][:16])
    a, b = clf.choice_logprobs([huge, head])
    assert torch.allclose(a, b, atol=1e-5)  # only the first 16 post tokens were read
    assert clf.pieces.suffix and clf.pieces.prefix  # instructions and suffix intact


def test_order_of_posts_is_preserved(tiny_llm):
    clf = _clf(tiny_llm["chat"], chat=True, mini_batch_size=2)
    posts = POSTS + [f"post number {i} about {'groups ' * i}" for i in range(10)]
    base = clf.classify(posts)
    order = list(range(len(posts)))
    random.Random(1).shuffle(order)
    shuffled = clf.classify([posts[i] for i in order])
    for got, i in zip(shuffled, order):
        assert got["prob_1"] == pytest.approx(base[i]["prob_1"], abs=1e-5)


def test_a_post_that_makes_it_raise_fails_alone(tiny_llm):
    clf = _clf(tiny_llm["chat"], chat=True)
    real = clf.choice_logprobs

    def fragile(texts, use_cache=True):
        if any("BOOM" in t for t in texts):
            raise RuntimeError("CUDA error on this post")
        return real(texts, use_cache)

    clf.choice_logprobs = fragile
    outcomes = classify_isolating(clf, POSTS[:2] + ["BOOM goes the post"] + POSTS[2:])
    assert [o.ok for o in outcomes] == [True, True, False, True, True]
    assert "CUDA error on this post" in outcomes[2].reason


@pytest.mark.parametrize("params,needle", [
    ({"template": "Label this post.", "choices": {1: "1", 0: "0"}}, "{text} exactly once"),
    ({"template": "{text} for {audience}", "choices": {1: "1", 0: "0"}}, "unknown slot"),
    ({"template": "Post: {text}", "choices": {1: "1"}}, "at least two choices"),
    # precomposed and decomposed "café": different text, one token sequence after NFC
    ({"template": "Post: {text}", "choices": {1: "caf\u00e9", 0: "cafe\u0301"}},
     "same answer tokens"),
    ({"prompt_file": PROMPT, "chat": True, "use": "raw"}, "no chat template"),
    ({"prompt_file": PROMPT, "model": "someorg/not-downloaded-7b"}, "hf download"),
])
def test_clear_errors_before_any_weights_load(tiny_llm, params, needle):
    params = dict(params)
    model = params.pop("model", tiny_llm[params.pop("use", "chat")])
    with pytest.raises(ClassifierConfigError, match=needle.replace("{", r"\{").replace(
            "}", r"\}")) as err:
        preflight("llm_prompt", {"model": model, **params})
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_pipeline_with_llm_prompt_writes_integer_labels_and_probabilities(inprocess,
                                                                          tmp_path, tiny_llm):
    import pyarrow as pa

    from tests.pipeline_helpers import run_inference
    from tests.queue_helpers import Store
    from tests.conftest import make_posts
    from tests.pipeline_helpers import NAME, output_table, pipeline_config, version_of

    cfg = pipeline_config(tmp_path, {"type": "llm_prompt", "params": {
        "model": tiny_llm["chat"], "prompt_file": PROMPT, "chat": True,
        "mini_batch_size": 16}}, batch_size=100)
    store = Store(tmp_path, NAME)
    store.enqueue(make_posts(300), batch_size=100, config_hash=version_of(cfg))
    summary = run_inference(cfg, NAME)
    table = output_table(tmp_path)
    assert summary.labelled == 300 and table.num_rows == 300
    assert table.schema.field("label").type == pa.int64()
    assert table.schema.field("prob_0").type == pa.float64()
    assert table.schema.field("prob_1").type == pa.float64()
    assert set(table.column("label").to_pylist()) <= {0, 1}
    assert set(table.column("classifier").to_pylist()) == {"llm_prompt"}


def test_cli_names_a_bad_prompt_before_anything_is_enqueued(tmp_path, capsys, tiny_llm):
    from jobs.backfill import main
    from tests.cli_helpers import write_config, write_posts

    write_posts(tmp_path, 50)
    cfg = write_config(tmp_path, {"type": "llm_prompt", "params": {
        "model": tiny_llm["chat"], "template": "Is this intergroup? {post}",
        "choices": {1: "1", 0: "0"}}})
    code = main(["--config", str(cfg), "-r", "posts", "--add-to-queue", "-i", "g",
                 "--run-integrations"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unknown slot(s) ['post']" in err[0]
    assert not (tmp_path / "data").exists()
