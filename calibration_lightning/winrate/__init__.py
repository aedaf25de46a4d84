"""Win rate: does the fine-tuned model still answer open instructions as well as before?"""
