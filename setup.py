"""mummi_jax: multi-modal world-model agents (MuMMI, CVRL, Dreamer, CoRAL) in JAX."""

from setuptools import find_packages, setup

setup(
    name="mummi_jax",
    version="0.1.0",
    description=(
        "Pure-functional JAX/Flax MuMMI: multi-modal state-space models robust to missing sensors"
    ),
    packages=find_packages(include=["mummi_jax", "mummi_jax.*", "experiments", "experiments.*"]),
    package_data={"experiments": ["*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax",
        "optax",
        "distrax",
        "chex",
        "dm-control==1.0.50",
        "mujoco==3.17.0",
        "dm-env",
        "absl-py",
        "numpy>=2",
        "lxml",
        "scikit-image",
        "av",
        "pillow",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "ruff"],
        # robosuite Wipe; 1.5.2 pins mink==0.0.5 -> numpy<2 (requirements.txt says more).
        "robosuite": ["robosuite==1.5.1", "mink>=1.0"],
    },
)
