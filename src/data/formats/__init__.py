"""Other annotation formats -> COCO JSON (convert_dataset.py).

    records.py       ImageRecord / BoxRecord, the common form every reader returns
    voc.py           Pascal VOC XML folders
    azureml_jsonl.py Azure-ML JSONL object detection (normalised corners)
    coco_writer.py   records -> annotations/instances_{train,val}.json + train/ val/ images (seeded split)
"""
