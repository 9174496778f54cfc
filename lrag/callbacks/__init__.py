"""Lightning callbacks: the predict summary, TensorBoard images and scalars, training guards."""
