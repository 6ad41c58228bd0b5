"""tgkit: export and analyse Telegram data from Jupyter."""
