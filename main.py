"""Train, evaluate or sample a score-based model: `python main.py --mode train|eval|sample|export ...`.

A thin script over `score_toolkit.cli` (also installed as the `score-toolkit` command); see
README.md for the modes and `configs/` for the configurations.
"""
from score_toolkit.cli import run

if __name__ == "__main__":
    run()
