from setuptools import find_packages, setup

setup(
    name="fairseq_kd",
    version="0.1.0",
    description="Knowledge distillation for fairseq neural machine translation models",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["fairseq_kd", "fairseq_kd.*"]),
    # fairseq-fixed must be built without build isolation after torch is installed;
    # `make install` does that before installing this package (see Makefile).
    install_requires=["torch>=2.0", "fairseq-fixed==0.12.3.1", "sacrebleu", "sentencepiece"],
    # Hugging Face models in and out (fairseq-kd-import-hf); the version tested with torch 2.13
    extras_require={"hf": ["transformers==5.25.0"]},
    entry_points={
        "console_scripts": [
            "fairseq-kd-export = fairseq_kd.cli.kd_export:cli_main",
            "fairseq-kd-pseudolabel = fairseq_kd.cli.kd_pseudolabel:cli_main",
            "fairseq-kd-cache-topk = fairseq_kd.cli.kd_cache_topk:cli_main",
            "fairseq-kd-evaluate = fairseq_kd.cli.kd_evaluate:cli_main",
            "fairseq-kd-import-hf = fairseq_kd.cli.kd_import_hf:cli_main",
        ],
    },
)
