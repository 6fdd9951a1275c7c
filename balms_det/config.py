"""Every config key balms-det adds to Detectron2's config.

Keys of the ROI head live under ``MODEL.ROI_BOX_HEAD.BALMS``; keys of training procedures
(decoupling, the Meta Reweigher, BTM, the synthetic dataset) under a root ``BALMS`` node.
No key outside these two nodes is added or changed.
"""

from . import _check  # noqa: F401  (clear error when Detectron2 is missing)

from detectron2.config import CfgNode as CN  # isort: skip

__all__ = ["add_balms_config"]


def add_balms_config(cfg):
    """Add the balms-det keys, with their defaults, to a Detectron2 config (in place), and
    register balms-det's ROI head (``BalmsROIHeads``) and the built-in synthetic datasets
    (``synth_lt_{train,val}``, ``synth_lt_tiny_{train,val}``) with Detectron2."""
    from . import modeling  # noqa: F401  (registers BalmsROIHeads)
    from .data import datasets  # noqa: F401  (registers the synthetic datasets)

    _C = cfg

    # ---------------------------------------------------------------------------------------
    # The box predictor (BalmsFastRCNNOutputLayers)
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_BOX_HEAD.BALMS = CN()
    # Classification loss (docs/METHODS.md): "softmax" (Detectron2's cross-entropy),
    # "balanced_softmax" (cross-entropy on prior-shifted logits), "label_over_smooth" (Label
    # Over-Smoothing), "sigmoid" (per-class binary logistic loss), "balanced_sigmoid" (the
    # published BALMS detection loss), "seesaw" (Seesaw loss), "eqlv2" (Equalization Loss v2).
    # Every loss uses Detectron2's classifier layout (K+1 outputs, background last): the sigmoid
    # family ignores the background column, seesaw reads it as the objectness logit.
    _C.MODEL.ROI_BOX_HEAD.BALMS.LOSS = "softmax"
    # Exponent of the prior in balanced softmax: 1.0 is Balanced Softmax, 0.25 the paper's
    # "Balanced Softmax 1/4", 0.0 plain cross-entropy.
    _C.MODEL.ROI_BOX_HEAD.BALMS.TAU = 1.0
    # Which class counts define the prior: "image_count" (training images containing the class,
    # the LVIS definition) or "instance_count" (training instances of the class).
    _C.MODEL.ROI_BOX_HEAD.BALMS.COUNT_TYPE = "image_count"
    # Which counts the prior of the count-based losses (balanced softmax, balanced sigmoid,
    # POSTHOC_TAU, the Meta Reweigher's "balanced" meta loss) holds: "dataset" (the training
    # set's counts) or "sampler" (the counts as the training sampler delivers them: under
    # RepeatFactorTrainingSampler each class's expected images (or instances) per epoch, the
    # sum of the repeat factors of the images holding it, and the expected number of images;
    # under TrainingSampler the dataset's counts; other samplers are an error). A balanced loss
    # under a re-balancing sampler with the dataset prior corrects the imbalance twice.
    _C.MODEL.ROI_BOX_HEAD.BALMS.PRIOR = "dataset"
    # Optional JSON written by tools/write_cat_info.py with per-category image_count and
    # instance_count; its ids are the dataset's own category ids (COCO's 1..90 with gaps),
    # mapped to contiguous ids with the training set's metadata. Empty: counts are computed from
    # DATASETS.TRAIN. Counts are resolved when training starts, never when a model is built:
    # inference uses the counts saved in the checkpoint.
    _C.MODEL.ROI_BOX_HEAD.BALMS.CAT_INFO = ""
    # Counts below this value are clamped to it (a class with no training image would otherwise
    # give log(0) = -inf); each clamped class is named in a warning.
    _C.MODEL.ROI_BOX_HEAD.BALMS.MIN_COUNT = 1.0
    # Smoothing strength delta of Label Over-Smoothing: the true class gets 1 - delta + delta/C,
    # every other class delta/C, with C = K + 1 classes in the softmax.
    _C.MODEL.ROI_BOX_HEAD.BALMS.LOS_DELTA = 0.9
    # Label Over-Smoothing of detection: True smooths a foreground ROI's target over the K
    # foreground classes only and keeps background ROIs one-hot (the fg/bg balance is kept);
    # False is the published form, every ROI smoothed over all K + 1 classes.
    _C.MODEL.ROI_BOX_HEAD.BALMS.LOS_FOREGROUND_ONLY = False
    # Inference only, softmax family: post-hoc logit adjustment (Menon et al. 2021), the
    # foreground logits minus POSTHOC_TAU * log(K * n_j / sum_k n_k) before the softmax, with the
    # counts of COUNT_TYPE; it rebalances a classifier trained with plain cross-entropy without
    # re-training it (the inference-time twin of balanced softmax). 0.0: off.
    _C.MODEL.ROI_BOX_HEAD.BALMS.POSTHOC_TAU = 0.0
    # Prior probability p0 for the bias initialisation of sigmoid classifiers:
    # bias = -log((1 - p0) / p0).
    _C.MODEL.ROI_BOX_HEAD.BALMS.PRIOR_PROB = 0.001
    # Log per-frequency-group diagnostics (mean foreground score of each group) to the event
    # storage every this many iterations; 0 turns them off. They need class image counts from a
    # source that costs no read of the training set (CAT_INFO, class_image_count metadata, or
    # counts a balanced loss already computed); without one they stay off.
    _C.MODEL.ROI_BOX_HEAD.BALMS.DIAGNOSTICS_PERIOD = 20
    # > 0: the classifier (cls_score) is a cosine classifier with this temperature (the
    # normalized linear layer of the published Seesaw LVIS recipe uses 20); same parameters as
    # the plain linear layer, so checkpoints load either way. 0: plain linear layer.
    _C.MODEL.ROI_BOX_HEAD.BALMS.NORMED_CLASSIFIER_TAU = 0.0
    # Seesaw loss (Wang et al. 2021): mitigation exponent P, compensation exponent Q, and EPS,
    # the floor of the probabilities in the compensation ratio.
    _C.MODEL.ROI_BOX_HEAD.BALMS.SEESAW = CN()
    _C.MODEL.ROI_BOX_HEAD.BALMS.SEESAW.P = 0.8
    _C.MODEL.ROI_BOX_HEAD.BALMS.SEESAW.Q = 2.0
    _C.MODEL.ROI_BOX_HEAD.BALMS.SEESAW.EPS = 0.01
    # Equalization Loss v2 (Tan et al. 2021): negative weight 1 / (1 + exp(-GAMMA (g - MU))),
    # positive weight 1 + ALPHA (1 - negative weight), g = accumulated positive / negative
    # gradient magnitude of the class.
    _C.MODEL.ROI_BOX_HEAD.BALMS.EQLV2 = CN()
    _C.MODEL.ROI_BOX_HEAD.BALMS.EQLV2.GAMMA = 12.0
    _C.MODEL.ROI_BOX_HEAD.BALMS.EQLV2.MU = 0.8
    _C.MODEL.ROI_BOX_HEAD.BALMS.EQLV2.ALPHA = 4.0

    # ---------------------------------------------------------------------------------------
    # Training procedures
    # ---------------------------------------------------------------------------------------
    _C.BALMS = CN()
    # Precision of mixed-precision training (SOLVER.AMP.ENABLED): "float16" or "bfloat16", the
    # dtype of Detectron2's AMPTrainer autocast; the Meta Reweigher's meta forward follows it.
    _C.BALMS.AMP_DTYPE = "float16"

    # Decoupled training: regular expressions (re.search) over parameter names; when non-empty,
    # only matching parameters are trained, everything else is frozen and its normalisation
    # layers are kept in eval mode. Stage 2 of the published schedule uses ["cls_score"].
    _C.BALMS.TRAINABLE_PARAMS = []
    # A training run with frozen parameters (TRAINABLE_PARAMS, MODEL.BACKBONE.FREEZE_AT) needs
    # weights to start from: with an empty MODEL.WEIGHTS the frozen layers keep their random
    # initialisation, and the run is refused before it starts. True trains on random frozen
    # layers on purpose (e.g. a random-feature control), with a warning.
    _C.BALMS.ALLOW_FROZEN_RANDOM_INIT = False

    # Meta Reweigher (per-class loss weights learned by one-step look-ahead on a balanced set).
    _C.BALMS.META = CN()
    # Turn the hook on.
    _C.BALMS.META.ENABLED = False
    # Run a meta step every PERIOD training iterations.
    _C.BALMS.META.PERIOD = 1
    # Learning rate of the Adam optimizer of the class-weight parameters.
    _C.BALMS.META.LR = 0.01
    # Parameterisation of the weights: "sigmoid" (w = sigmoid(psi), published) or "exp"
    # (w = exp(psi)).
    _C.BALMS.META.WEIGHT_FN = "sigmoid"
    # Initial value of psi for every class.
    _C.BALMS.META.INIT = 0.0
    # Renormalise the weights of the foreground ROIs of a batch to mean 1 (published).
    _C.BALMS.META.NORMALIZE = True
    # Loss of the looked-ahead classifier on the meta batch: "plain" (paper) or "balanced"
    # (what the published code did).
    _C.BALMS.META.META_LOSS = "plain"
    # Meta set: empty = the training set drawn class-balanced (repeat factor 1/f per class,
    # image factor = max over its classes, no square root); else a registered dataset name.
    _C.BALMS.META.DATASET = ""
    # Images per meta batch (total over all GPUs, like SOLVER.IMS_PER_BATCH). Its no-grad
    # forward is the hook's main cost: measured on the synthetic default (batch 8, PERIOD 1),
    # 2 meta images cost 1.11x the step time without the hook, 4 cost 1.20x.
    _C.BALMS.META.IMS_PER_BATCH = 2
    # Cache the ROI features of the meta set (only valid when everything before the classifier
    # is frozen, i.e. in the decoupled stage).
    _C.BALMS.META.CACHE_FEATURES = False
    # Write the hook's weights summary and meta loss to the event storage every this many
    # iterations (one read of the device each time, none between; Detectron2's writers print
    # every 20 iterations). Non-finite meta-gradients, skipped on the device, are reported then.
    _C.BALMS.META.LOG_PERIOD = 20

    # Balanced Training and Merging.
    _C.BALMS.BTM = CN()
    # Number of class-balanced few-shot subsets (N_D).
    _C.BALMS.BTM.NUM_SUBSETS = 10
    # Training images per class in each subset (N_C); a class with fewer uses all it has.
    _C.BALMS.BTM.SHOTS = 10
    # Seed of the subset draw.
    _C.BALMS.BTM.SEED = 0
    # Iterations of each few-shot fine-tune.
    _C.BALMS.BTM.ITERS = 500
    # Base learning rate of each few-shot fine-tune.
    _C.BALMS.BTM.BASE_LR = 0.002
    # Merge weights (empty = uniform 1/N_D).
    _C.BALMS.BTM.MERGE_WEIGHTS = []

    # Evaluation (BalmsLVISEvaluator.from_config).
    _C.BALMS.EVAL = CN()
    # Engine computing the LVIS metrics: "fast" (balms_det.lvis_eval, identical
    # numbers) or "lvis-api" (the reference lvis 0.5.3, run with a numpy compatibility shim;
    # standard and fixed protocols only).
    _C.BALMS.EVAL.ENGINE = "fast"
    # Protocols evaluated: "standard" (LVIS, MAX_DETS_PER_IMAGE per image; tasks bbox, segm),
    # "fixed" (AP-fixed, Dave et al. 2021: the top FIXED_DETS_PER_CATEGORY detections of each
    # category over the dataset, no per-image cap; bbox_fixed, segm_fixed), "pool" (AP-pool:
    # those detections, precision pooled over all / r / c / f categories; bbox_pool, segm_pool),
    # "boundary" (boundary AP of masks, Cheng et al. 2021; boundary).
    _C.BALMS.EVAL.PROTOCOLS = ["standard"]
    # Per-category budget k of AP-fixed and AP-pool; the evaluator keeps at most 2 k detections
    # per category in memory while predictions stream in. The model must output enough of them:
    # raise TEST.DETECTIONS_PER_IMAGE and lower MODEL.ROI_HEADS.SCORE_THRESH_TEST.
    _C.BALMS.EVAL.FIXED_DETS_PER_CATEGORY = 10000
    # Per-image cap of the standard and boundary protocols (LVIS: 300), independent of
    # TEST.DETECTIONS_PER_IMAGE (which AP-fixed may need higher).
    _C.BALMS.EVAL.MAX_DETS_PER_IMAGE = 300

    # The synthetic long-tailed dataset (registered as synth_lt_train / synth_lt_val).
    _C.BALMS.SYNTHETIC = CN()
    # Number of classes K.
    _C.BALMS.SYNTHETIC.NUM_CLASSES = 48
    # Number of training images.
    _C.BALMS.SYNTHETIC.NUM_TRAIN_IMAGES = 1000
    # Validation instances per class (the validation split is balanced).
    _C.BALMS.SYNTHETIC.VAL_INSTANCES_PER_CLASS = 8
    # Training images of the most and of the least frequent class (geometric in between).
    _C.BALMS.SYNTHETIC.MAX_IMAGES_PER_CLASS = 400
    _C.BALMS.SYNTHETIC.MIN_IMAGES_PER_CLASS = 1
    # Side of the square images in pixels.
    _C.BALMS.SYNTHETIC.IMAGE_SIZE = 128
    # Seed of the generator.
    _C.BALMS.SYNTHETIC.SEED = 0
    # Cache folder; empty = $BALMS_DATASETS, else <repo>/datasets/synthetic.
    _C.BALMS.SYNTHETIC.ROOT = ""

    # Your own datasets, registered by file (COCO or LVIS format; evaluated with the LVIS
    # protocol, groups from the training counts when the file has no "frequency").
    _C.BALMS.DATASETS = CN()
    # A list of [name, annotation_json, image_root] triples, e.g.
    # [["mydata_train", "data/train.json", "data/images"], ["mydata_val", ...]].
    _C.BALMS.DATASETS.REGISTER = []
    # Check every annotation of DATASETS.TRAIN and DATASETS.TEST by the evaluator's input rules
    # when Detectron2 reads it (errors name the file and the annotation). False skips the check
    # for data you trust, e.g. LVIS itself: at 100k images it costs about half a read.
    _C.BALMS.DATASETS.CHECK_ANNOTATIONS = True
    return cfg
