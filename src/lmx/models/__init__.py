"""Language models: the tutorial's Transformer (transformer.py), the fused decoder + loss it
trains through (fused_loss.py), and a trained model rebuilt from its checkpoint
(pretrained.py)."""
