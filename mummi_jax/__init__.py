"""mummi_jax: multi-modal world-model agents robust to missing sensors (MuMMI, ICRA 2021)."""

__version__ = "0.1.0"
