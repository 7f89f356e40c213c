"""How a model uses what it sees: changed images (blind, context, shape), evidence attention along the
reasoning, contrastive region masking (CRM) and uncertainty, measured on the greedy completions."""
