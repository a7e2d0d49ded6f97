"""VLT's shared code: ViT backbones from vision-language and foundation models, the text encoder,
the solver, domain-generalization datasets and evaluation."""
