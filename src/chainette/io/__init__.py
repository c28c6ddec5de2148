"""What is *kept*: input reading and the run folder."""
