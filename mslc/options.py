"""The names of the algorithm's options, importable without torch (a config is parsed and
validated before any model exists): the modules that implement them import these."""

REFRESH_POLICIES = ("epoch", "step")  # mslc.bank: when ỹ_{t-1} is refreshed
LOSS_MODES = ("soft", "hard")  # mslc.corrector
CORRECTORS = ("loss", "class")  # mslc.corrector
ALPHA_PRIORS = ("none", "prediction")  # mslc.corrector: what α_net's output is added to, in logit space
META_SCOPES = ("all", "last")  # mslc.meta_step: what the virtual step moves: every parameter, or the classifier layer
META_GRADS = ("exact", "local")  # mslc.meta_step: the θ-gradient across workers: of the global meta loss, or per rank
META_GRAD_IMPLS = ("double-backward", "jvp")  # mslc.meta_step: two computations of the same exact θ-gradient
ARCHS = ("small-cnn", "resnet18", "resnet34", "resnet50")  # mslc.models
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # mslc.precision
