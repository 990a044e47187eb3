"""The papers' own numbers for the tables `tfvctr reproduce` runs (tfvctr/reproduce.py).

CSCNN: Liu et al., "Category-Specific CNN for Visual-aware CTR Prediction at JD.com", KDD
2020 (Tables 4, 5, 6, 8, 9: Amazon Men where the paper has several datasets, the one its
ablations use). DeepCTR: Chen et al., "Deep CTR Prediction in Display Advertising", MM 2016
(Tables 1, 2 and 4: relative AUC and log loss against lr_basic, Eq. 8, in percent). Fig. 5
of CSCNN is a plot without printed numbers: only its stated optimum is recorded.

`PAPER[table][row] = {metric: value}`; rows are `tfvctr.reproduce` row keys; metrics are
`user_auc` (Eq. 13, the per-user AUC of the Amazon ablations) and `cold_auc` (CSCNN Tables
4-6, 9), `auc` (Table 8, JD's offline AUC) or `rel_auc` and `rel_logloss` (DeepCTR, percent).
"""

from __future__ import annotations

PAPER: dict[str, dict[str, dict[str, float]]] = {
    # CSCNN Table 4, Amazon Men, point-wise loss, mean of 5 runs (std ~0.1 %).
    "cscnn-4": {
        "bpr_mf": {"user_auc": 0.6321, "cold_auc": 0.5331},
        "vbpr": {"user_auc": 0.7079, "cold_auc": 0.6880},
        "dvbpr": {"user_auc": 0.7491, "cold_auc": 0.6985},
        "dvbpr_c": {"user_auc": 0.7549, "cold_auc": 0.7018},
        "sherlock": {"user_auc": 0.7239, "cold_auc": 0.6910},
        "deepstyle": {"user_auc": 0.7279, "cold_auc": 0.7210},
        "dvbpr_sca": {"user_auc": 0.7547, "cold_auc": 0.7048},
        "cscnn": {"user_auc": 0.7749, "cold_auc": 0.7315},
    },
    # CSCNN Table 9, Amazon Men, pair-wise loss.
    "cscnn-9": {
        "bpr_mf": {"user_auc": 0.6450, "cold_auc": 0.5132},
        "vbpr": {"user_auc": 0.7089, "cold_auc": 0.6863},
        "dvbpr": {"user_auc": 0.7410, "cold_auc": 0.6923},
        "dvbpr_c": {"user_auc": 0.7483, "cold_auc": 0.7086},
        "sherlock": {"user_auc": 0.7206, "cold_auc": 0.6969},
        "deepstyle": {"user_auc": 0.7282, "cold_auc": 0.7247},
        "dvbpr_sca": {"user_auc": 0.7515, "cold_auc": 0.7099},
        "cscnn": {"user_auc": 0.7753, "cold_auc": 0.7303},
    },
    # CSCNN Table 5, Amazon Men: self attention (left) and + category prior (right).
    "cscnn-5": {
        "none": {"user_auc": 0.7491, "cold_auc": 0.6985},
        "se": {"user_auc": 0.7500, "cold_auc": 0.6989},
        "cbam_channel": {"user_auc": 0.7506, "cold_auc": 0.7002},
        "cbam": {"user_auc": 0.7556, "cold_auc": 0.7075},
        "se_cscnn": {"user_auc": 0.7673, "cold_auc": 0.7153},
        "cbam_channel_cscnn": {"user_auc": 0.7683, "cold_auc": 0.7184},
        "cscnn": {"user_auc": 0.7749, "cold_auc": 0.7315},
    },
    # CSCNN Table 6, Amazon Men: CNN-F and Inception V1 backbones.
    "cscnn-6": {
        "cnnf_none": {"user_auc": 0.7491, "cold_auc": 0.6985},
        "cnnf_cbam": {"user_auc": 0.7556, "cold_auc": 0.7075},
        "cnnf_cscnn": {"user_auc": 0.7749, "cold_auc": 0.7315},
        "inception_none": {"user_auc": 0.7747, "cold_auc": 0.7259},
        "inception_cbam": {"user_auc": 0.7794, "cold_auc": 0.7267},
        "inception_cscnn": {"user_auc": 0.7852, "cold_auc": 0.7386},
    },
    # CSCNN Table 8, JD.com production data, offline AUC (no cold split reported).
    "cscnn-8": {
        "dcn": {"auc": 0.7441},
        "cnn_fixed": {"auc": 0.7463},
        "cnn_finetune": {"auc": 0.7500},
        "cbam": {"auc": 0.7506},
        "cscnn": {"auc": 0.7527},
    },
    # CSCNN Fig. 5: a plot; the text states the optimum C' = 20, H' = W' = 7 and that AUC
    # grows with L' up to 4 (CNN-F). No numbers to print beside ours.
    "cscnn-fig5": {},
    # DeepCTR Table 1: relative AUC / log loss vs lr_basic (%), best of three runs.
    "deepctr-1": {
        "lr_basic": {"rel_auc": 0.0, "rel_logloss": 0.0},
        "fm_basic": {"rel_auc": 1.47, "rel_logloss": -0.40},
        "dnn_basic": {"rel_auc": 1.41, "rel_logloss": -0.39},
        "dnn_conv17": {"rel_auc": 4.13, "rel_logloss": -0.86},
        "deepctr": {"rel_auc": 5.07, "rel_logloss": -1.11},
        "deepctr_x3": {"rel_auc": 5.92, "rel_logloss": -1.30},
    },
    # DeepCTR Table 2: the same on the 3,090 images never shown in training (dnn_sift is
    # their hand-crafted-feature row; ours is dnn_conv17, pre-extracted CNN features).
    "deepctr-2": {
        "lr_basic": {"rel_auc": 0.0, "rel_logloss": 0.0},
        "dnn_basic": {"rel_auc": 1.07, "rel_logloss": -0.21},
        "dnn_conv17": {"rel_auc": 2.14, "rel_logloss": -0.48},
        "deepctr": {"rel_auc": 5.54, "rel_logloss": -0.85},
    },
    # DeepCTR Table 4: dnn_conv17 (frozen Convnet) trained with Alg. 1's sampling and with a
    # thorough shuffle, relative AUC / log loss vs lr_basic (%), as Table 1.
    "deepctr-4": {
        "lr_basic": {"rel_auc": 0.0, "rel_logloss": 0.0},
        "alg1": {"rel_auc": 4.13, "rel_logloss": -0.86},
        "shuffle": {"rel_auc": 4.12, "rel_logloss": -0.86},
    },
}
