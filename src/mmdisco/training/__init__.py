"""Training the MMDisCo discriminator: losses, fake pairs and the trainer."""
