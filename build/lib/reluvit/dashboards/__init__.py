"""Weights & Biases: the paper's figures as W&B dashboards (a saved workspace view and a report per figure, built
with wandb-workspaces), the figure runs that carry each figure's table, image and charts, whether this machine is
logged in, and uploading offline runs. Imports wandb only where a command needs it."""
