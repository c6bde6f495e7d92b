"""A store after two rounds, written directly (no model): what tests/test_report.py and the
browser tests of the report and the Rounds view read.

Six evaluation prompts, each answered by the policies of rounds 0, 1 and 2, and compared across
rounds (round 1 vs 0; round 2 vs 1 and vs 0). The human `ann` labels every cross-round
comparison; the simulated `sim-1` labels round 2 vs 0 only. Outcomes from the newer side:

    round 1 vs 0: W W W W L T   (4.5 / 6 = 75%)
    round 2 vs 1: W W W W W L   (5 / 6)
    round 2 vs 0: T W W W W W   (5.5 / 6) by ann, W W W W W W by sim-1

Round 0 also has four same-round comparisons labeled by `ann` and `bob` (agreeing on three:
Krippendorff's alpha among humans), round 0 and 1 have reward and PPO metrics and PPO curves;
round 1's reward model is an ensemble of four members.
Prompt 5 and round 2's answer to it carry hostile HTML.
"""

from __future__ import annotations

from rankloop.data import curves
from rankloop.data.records import Label, Prompt, Response, Round

HOSTILE = (
    'Look: <script>window.__pwned=1</script> and <img src=x onerror="window.__pwned=2"> '
    "& <b>bold</b>"
)

OUTCOMES = {(1, 0): "WWWWLT", (2, 1): "WWWWWL", (2, 0): "TWWWWW"}
SIMULATED = {(2, 0): "WWWWWW"}

ROUND_METRICS = {
    0: {
        "reward/accuracy": 0.7,
        "reward/probe_accuracy": 0.6,
        "reward/ece": 0.05,
        "reward/eval_pairs": 20.0,
        "ppo/steps": 3.0,
        "ppo/score_first": 0.1,
        "ppo/score_last": 0.4,
        "ppo/kl_last": 1.5,
        "ppo/response_length_last": 40.0,
    },
    1: {
        "reward/accuracy": 0.8,
        "reward/probe_accuracy": 0.65,
        "reward/ece": 0.04,
        "reward/eval_pairs": 30.0,
        # an ensemble of four (round 0's reward model is a single one)
        "reward/members": 4.0,
        "reward/member_accuracy_min": 0.7,
        "reward/member_accuracy_max": 0.8333333333333334,
        "reward/spread": 0.125,
        "ppo/steps": 2.0,
        "ppo/score_first": 0.3,
        "ppo/score_last": 0.9,
        "ppo/kl_last": 2.0,
        "ppo/kl_final": 1.25,
        "ppo/kept_step": 1.0,
        "ppo/response_length_last": 35.0,
    },
}
CURVES = {
    0: [
        {
            "step": 1,
            "objective/scores": 0.1,
            "objective/kl": 0.0,
            "objective/response_length": 50.0,
        },
        {
            "step": 2,
            "objective/scores": 0.2,
            "objective/kl": 0.8,
            "objective/response_length": 45.0,
        },
        {
            "step": 3,
            "objective/scores": 0.4,
            "objective/kl": 1.5,
            "objective/response_length": 40.0,
        },
    ],
    1: [
        {
            "step": 1,
            "objective/scores": 0.3,
            "objective/kl": 0.0,
            "objective/response_length": 38.0,
        },
        {
            "step": 2,
            "objective/scores": 0.9,
            "objective/kl": 2.0,
            "objective/response_length": 35.0,
        },
    ],
}


def two_round_store(store) -> dict:
    """Fill `store` as the module docstring says; returns the ids a test needs."""
    prompts = [
        Prompt.from_text(HOSTILE if i == 5 else f"Evaluation question {i}?") for i in range(6)
    ]
    pids = store.add_prompts(prompts)
    ann = store.add_annotator("ann")[0].id
    bob = store.add_annotator("bob")[0].id
    sim = store.add_annotator("sim-1")[0].id
    resp = {}
    for i, pid in enumerate(pids):
        for rnd in (0, 1, 2):
            text = (
                f"{HOSTILE} (round 2's answer)"
                if (i, rnd) == (5, 2)
                else f"Round {rnd} answers question {i}."
            )
            resp[(i, rnd)] = store.add_responses(
                [Response(pid, text, round=rnd, policy=f"policy-{rnd}")]
            )[0]
    labels = []
    for (new, old), outcomes in OUTCOMES.items():
        for i, pid in enumerate(pids):
            cid = store.add_comparison(pid, [resp[(i, old)], resp[(i, new)]], round=new)
            choice = {"W": "B", "L": "A", "T": "tie"}[outcomes[i]]
            labels.append(Label.pairwise(cid, ann, (resp[(i, old)], resp[(i, new)]), choice))
            if (new, old) in SIMULATED:
                sim_choice = {"W": "A", "L": "B", "T": "tie"}[SIMULATED[(new, old)][i]]
                labels.append(
                    Label.pairwise(
                        cid, sim, (resp[(i, new)], resp[(i, old)]), sim_choice, source="simulated"
                    )
                )
    # same-round comparisons of round 0: ann and bob agree on three of four
    for i, (a_choice, b_choice) in enumerate([("A", "A"), ("B", "B"), ("A", "A"), ("A", "B")]):
        other = store.add_responses(
            [
                Response(
                    pids[i],
                    f"Another round 0 answer {i}.",
                    round=0,
                    policy="policy-0",
                    sample_index=1,
                )
            ]
        )[0]
        cid = store.add_comparison(pids[i], [resp[(i, 0)], other], round=0)
        labels.append(Label.pairwise(cid, ann, (resp[(i, 0)], other), a_choice))
        labels.append(Label.pairwise(cid, bob, (resp[(i, 0)], other), b_choice))
    store.add_labels(labels)
    for rnd, metrics in ROUND_METRICS.items():
        store.save_round(Round(rnd, policy=f"rounds/{rnd}/policy", metrics=metrics))
        curves.record_curve(store, rnd, "ppo", CURVES[rnd])
    store.set_current_round(2)
    return {"prompts": pids, "responses": resp}
