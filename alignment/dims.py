"""Names of the dimensions, coordinates and variables shared by every step (DESIGN.md section 3).

Nothing is aligned by position: every object on disk carries these labels, and code refers to
them through the constants below rather than string literals.
"""

# dimensions
STIMULUS = "stimulus"  # one row per presentation (trial) or per stimulus after averaging
TIME = "time"  # one row per TR for time series
VOXEL = "voxel"  # voxel or surface vertex
UNIT = "unit"  # feature unit (hidden dimension, possibly times FIR delay)
TOKEN = "token"  # patch or word token inside one stimulus
LAYER = "layer"
WORD = "word"  # one row per word of a narrative (word-level features before downsampling)

# coordinates
STIMULUS_ID = "stimulus_id"
REPETITION = "repetition"
SESSION = "session"
RUN = "run"
ROI = "roi"
HEMI = "hemi"
VERTEX = "vertex"
ONSET = "onset"
OFFSET = "offset"
MODEL = "model"
DELAY = "delay"
RELATIVE_DEPTH = "relative_depth"  # layer position: 0 = input, 1 = last layer

# variables
RESPONSES = "responses"
FEATURES = "features"
CEILING = "ceiling"  # noise ceiling as a fraction of variance (R^2 scale)

# score variables (Scores: (layer, voxel))
R = "r"
R2 = "r2"
P = "p"
Q = "q"
R_NULL_MEAN = "r_null_mean"
R_NULL_P95 = "r_null_p95"
ALPHA = "alpha"
# bootstrap confidence interval of the ROI mean r, repeated on every voxel of the ROI
R_ROI_CI_LOW = "r_roi_ci_low"
R_ROI_CI_HIGH = "r_roi_ci_high"

# roi label for vertices in no ROI
NO_ROI = "none"

# banded ridge (variance partitioning): variables with dims (layer, space, voxel)
SPACE = "space"  # one feature space of a banded encoder
R2_SPLIT = "r2_split"  # each space's share of the joint R² (product measure)
R2_WITHOUT = "r2_without"  # R² of the model refitted without the space
R2_UNIQUE = "r2_unique"  # joint R² minus r2_without: variance only the space explains
