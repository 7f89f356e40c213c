"""mpcc: reinforcement fine-tuning of VLMs on Masked Prediction via Context and Commonsense."""

__version__ = "0.1.0"
