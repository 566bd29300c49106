"""fedbpt: black-box federated prompt tuning (FedBPT) of a frozen language model."""

import warnings

# pycma warns on import when matplotlib is absent; plotting is not used here.
warnings.filterwarnings("ignore", message="Could not import matplotlib")

__version__ = "0.1.0"
