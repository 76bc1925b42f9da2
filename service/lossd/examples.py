"""A small valid call for every loss: used to warm each device up, and as documentation examples."""

from __future__ import annotations

from typing import Any

_L = [[1.2, -0.3, 0.5], [0.1, 0.9, -1.1]]  # (2,3) logits
_HM = [[[[0.2, -1.0], [0.5, 1.5]]]]  # (1,1,2,2)
_HM_T = [[[[0.0, 0.3], [0.6, 1.0]]]]
_IMG = [[[[0.1, 0.5, 0.9], [0.3, 0.2, 0.7], [0.4, 0.6, 0.8]]] * 3]  # (1,3,3,3)
# perceptual's default layers reach relu4_3, behind three 2x2 poolings: 8x8 is the smallest image.
_IMG8 = [[[[((i * 8 + j) % 7) / 7 for j in range(8)] for i in range(8)]] * 3]
_IMG8_T = [[[[((i * 8 + j) % 5) / 5 for j in range(8)] for i in range(8)]] * 3]

EXAMPLES: dict[str, dict[str, Any]] = {
    "cross_entropy": {"inputs": {"input": _L, "target": [0, 2]}},
    "nll": {"inputs": {"input": [[-0.5, -1.2, -2.0], [-1.1, -0.4, -2.3]], "target": [0, 1]}},
    "binary_cross_entropy": {"inputs": {"input": [0.2, 0.7, 0.9], "target": [0.0, 1.0, 1.0]}},
    "binary_cross_entropy_with_logits": {"inputs": {"input": [0.5, -1.0, 2.0], "target": [0.0, 1.0, 1.0]}},
    "balanced_binary_cross_entropy": {"inputs": {"input": [[0.5, -1.0, 2.0]], "target": [[0.0, 1.0, 1.0]]}},
    "focal": {"inputs": {"input": _L, "target": [0, 2]}, "params": {"gamma": 2.0}},
    "sigmoid_focal": {"inputs": {"input": [0.5, -1.0, 2.0], "target": [0.0, 1.0, 1.0]}},
    "centernet_focal": {"inputs": {"input": _HM, "target": _HM_T}},
    "centernet": {
        "inputs": {
            "hm": _HM,
            "hm_target": _HM_T,
            "wh": [[[[1.0, 2.0], [3.0, 4.0]], [[1.5, 2.5], [3.5, 4.5]]]],
            "wh_target": [[[3.0, 4.0]]],
            "offset": [[[[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.6], [0.7, 0.8]]]],
            "offset_target": [[[0.25, 0.75]]],
            "ind": [[3]],
            "mask": [[1]],
        }
    },
    "kl_div": {"inputs": {"input": [[-1.2, -0.4, -2.0]], "target": [[0.2, 0.5, 0.3]]}},
    "js_div": {"inputs": {"input": [[0.1, 0.6, 0.3]], "target": [[0.3, 0.3, 0.4]]}},
    "hinge": {"inputs": {"input": [0.3, -0.8, 1.5], "target": [1.0, -1.0, -1.0]}},
    "squared_hinge": {"inputs": {"input": [0.3, -0.8, 1.5], "target": [1.0, 0.0, 0.0]}},
    "categorical_hinge": {"inputs": {"input": _L, "target": [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]}},
    "multi_margin": {"inputs": {"input": _L, "target": [0, 2]}},
    "exponential": {"inputs": {"input": [0.3, -0.8, 1.5], "target": [1.0, -1.0, -1.0]}},
    "poisson_nll": {"inputs": {"input": [0.5, 1.0, -0.2], "target": [1.0, 2.0, 0.0]}},
    "gaussian_nll": {"inputs": {"input": [0.5, 1.0, -0.2], "target": [1.0, 2.0, 0.0], "var": [0.5, 1.0, 2.0]}},
    "soft_margin": {"inputs": {"input": [0.3, -0.8, 1.5], "target": [1.0, -1.0, -1.0]}},
    "multilabel_soft_margin": {"inputs": {"input": _L, "target": [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]}},
    "multilabel_margin": {"inputs": {"input": _L, "target": [[0, 2, -1], [1, -1, -1]]}},
    "hinge_embedding": {"inputs": {"input": [0.3, 0.8, 1.5], "target": [1.0, -1.0, -1.0]}},
    "ctc": {
        "inputs": {
            "input": [[[-1.2, -0.8, -1.4]], [[-0.9, -1.3, -1.1]], [[-1.0, -1.0, -1.3]], [[-1.5, -0.7, -1.2]]],
            "targets": [[1, 2]],
            "input_lengths": [4],
            "target_lengths": [2],
        },
        "params": {"input_is": "logits"},
    },
    "edit_distance": {"inputs": {"hypothesis": ["kitten", "flaw"], "truth": ["sitting", "lawn"]}},
    "mse": {"inputs": {"input": [0.5, 1.5, -0.2], "target": [1.0, 1.0, 0.0]}},
    "l1": {"inputs": {"input": [0.5, 1.5, -0.2], "target": [1.0, 1.0, 0.0]}},
    "smooth_l1": {"inputs": {"input": [0.5, 1.5, -0.2], "target": [1.0, 1.0, 0.0]}},
    "huber": {"inputs": {"input": [0.5, 1.5, -0.2], "target": [1.0, 1.0, 0.0]}},
    "tukey_biweight": {"inputs": {"input": [[0.5], [1.5], [-0.2], [3.0]], "target": [[1.0], [1.0], [0.0], [0.0]]}},
    "log_cosh": {"inputs": {"input": [0.5, 1.5, -0.2], "target": [1.0, 1.0, 0.0]}},
    "quantile": {"inputs": {"input": [0.5, 1.5, -0.2], "target": [1.0, 1.0, 0.0]}, "params": {"q": 0.9}},
    "dice": {"inputs": {"input": [[[[0.2, 0.8]], [[0.8, 0.2]]]], "target": [[[0, 1]]]}},
    "tversky": {"inputs": {"input": [[[[0.2, 0.8]], [[0.8, 0.2]]]], "target": [[[0, 1]]]}},
    "total_variation": {"inputs": {"input": _IMG}},
    "perceptual": {"inputs": {"input": _IMG8, "target": _IMG8_T}},
    "contrastive": {"inputs": {"x1": [[0.1, 0.2], [0.5, -0.3]], "x2": [[0.0, 0.4], [0.9, 0.1]], "label": [1, 0]}},
    "triplet_margin": {
        "inputs": {
            "anchor": [[0.1, 0.2], [0.5, -0.3]],
            "positive": [[0.0, 0.4], [0.6, -0.2]],
            "negative": [[0.9, 0.1], [-0.5, 0.3]],
        }
    },
    "cosine_embedding": {
        "inputs": {"input1": [[0.1, 0.2], [0.5, -0.3]], "input2": [[0.0, 0.4], [0.9, 0.1]], "target": [1, -1]}
    },
    "margin_ranking": {"inputs": {"input1": [0.1, 0.7], "input2": [0.4, 0.2], "target": [1, -1]}},
    "info_nce": {"inputs": {"z1": [[0.1, 0.2], [0.5, -0.3]], "z2": [[0.0, 0.4], [0.9, 0.1]]}},
    "gan": {"inputs": {"fake": [0.3, -1.2], "real": [1.1, 0.4]}},
}
