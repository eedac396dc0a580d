"""mummi_jax: multi-modal world-model agents (MuMMI, CVRL, Dreamer, CoRAL) in JAX."""

import platform
import sys
import warnings

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


def _dist_file(dist: str, suffix: str) -> str:
    """Where an installed distribution put the file whose path ends in `suffix` (a wheel's
    data files land under the environment's prefix, which differs between venvs, --user and
    conda)."""
    import os
    from importlib import metadata

    for f in metadata.distribution(dist).files or ():
        if ("/" + str(f)).endswith(suffix):
            return os.path.realpath(f.locate())
    raise FileNotFoundError(f"{dist} has no {suffix}")


class BuildKernels(build_ext):
    """Builds mummi_jax.kernels._onednn_conv against the build environment's oneDNN
    (pyproject's build requirements). The kernel is optional: where it cannot be built the
    install goes on and `model.conv_impl=auto` uses XLA's matrix products instead
    (`mummi_jax.kernels.onednn.status()` says why)."""

    def build_extensions(self):
        import importlib.util
        import os

        try:
            header = _dist_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")
            library = _dist_file("onednn-cpu-gomp", "/libdnnl.so.3")
            jaxlib = importlib.util.find_spec("jaxlib").submodule_search_locations[0]
        except Exception as e:  # noqa: BLE001 - any missing piece means: skip the kernel
            warnings.warn(f"mummi_jax: oneDNN kernel not built ({e})", stacklevel=1)
            self.extensions = []
            return
        for ext in self.extensions:
            # .../include/oneapi/dnnl/dnnl.hpp: the include root is two folders above it.
            ext.include_dirs += [
                os.path.dirname(os.path.dirname(os.path.dirname(header))),
                os.path.join(jaxlib, "include"),
            ]
            ext.extra_link_args += [library]
        super().build_extensions()


KERNELS = (
    [
        Extension(
            "mummi_jax.kernels._onednn_conv",
            ["mummi_jax/kernels/onednn_conv.cc"],
            language="c++",
            # The warnings silenced are the XLA FFI headers', not ours.
            extra_compile_args=[
                "-std=c++17",
                "-O2",
                "-Wno-attributes",
                "-Wno-return-type",
                "-Wno-sign-compare",
            ],
            optional=True,
        )
    ]
    if sys.platform.startswith("linux") and platform.machine() == "x86_64"
    else []
)

setup(
    name="mummi_jax",
    version="0.1.0",
    description=(
        "Pure-functional JAX/Flax MuMMI: multi-modal state-space models robust to missing sensors"
    ),
    packages=find_packages(include=["mummi_jax", "mummi_jax.*", "experiments", "experiments.*"]),
    package_data={"experiments": ["*.json"]},
    ext_modules=KERNELS,
    cmdclass={"build_ext": BuildKernels},
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
        # oneDNN's runtime for the CPU encoders' convolutions (mummi_jax/kernels).
        "onednn-cpu-gomp==2023.2.0; sys_platform == 'linux' and platform_machine == 'x86_64'",
    ],
    extras_require={
        "test": ["pytest", "ruff"],
        # robosuite Wipe; 1.5.2 pins mink==0.0.5 -> numpy<2 (requirements.txt says more).
        "robosuite": ["robosuite==1.5.1", "mink>=1.0"],
    },
)
